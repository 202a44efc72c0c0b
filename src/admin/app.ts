import { createHash, timingSafeEqual } from "node:crypto";
import { type AnyElysia, Elysia } from "elysia";
import { bearerToken } from "../http/auth.ts";
import { ApiError } from "../http/errors.ts";
import type { Logger } from "../observability/logger.ts";
import type { Metrics } from "../observability/metrics.ts";

/** Compares tokens in constant time (hashing first so the lengths are equal too). */
function tokenMatches(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * The admin RPC listener's app: every route needs `Authorization: Bearer $ADMIN_TOKEN`.
 * Without a configured token it refuses every call.
 */
export function createAdminApp(deps: {
  adminToken?: string;
  metrics: Metrics;
  logger: Logger;
  routes?: AnyElysia[];
}) {
  const app = new Elysia({ name: "clearbox.admin" })
    .onError(({ code, error, set }) => {
      let failure: ApiError;
      if (error instanceof ApiError) failure = error;
      else if (code === "VALIDATION") failure = new ApiError("invalid", "request does not match the schema");
      else if (code === "PARSE") failure = new ApiError("invalid", "body is not valid JSON");
      else if (code === "NOT_FOUND") failure = new ApiError("not_found", "no such route");
      else {
        deps.logger.error({ err: error }, "admin call failed");
        failure = new ApiError("internal", "internal error");
      }
      set.status = failure.status;
      return failure.toBody();
    })
    // onRequest, not onBeforeHandle, so unknown paths are refused too and reveal nothing without a token.
    .onRequest(({ request }) => {
      const token = bearerToken(request.headers.get("authorization") ?? undefined);
      if (!deps.adminToken)
        throw new ApiError("unauthorized", "admin RPC is disabled: ADMIN_TOKEN is not set");
      if (!token || !tokenMatches(token, deps.adminToken)) {
        deps.logger.warn({ path: new URL(request.url).pathname }, "admin call refused: bad token");
        throw new ApiError("unauthorized", "missing or wrong admin token");
      }
    })
    .get("/metrics", async ({ set }) => {
      set.headers["content-type"] = deps.metrics.registry.contentType;
      return deps.metrics.registry.metrics();
    });
  for (const routes of deps.routes ?? []) app.use(routes);
  return app;
}
