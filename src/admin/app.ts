import { createHash, timingSafeEqual } from "node:crypto";
import { type AnyElysia, Elysia } from "elysia";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import { DomainError, errorReply, frameworkRefusal } from "../http/errors.ts";
import { jsonBodyGate } from "../http/json-body.ts";
import type { Logger } from "../observability/logger.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { ClientAddresses } from "../ratelimit/index.ts";
import { bearerToken } from "../sessions/auth.ts";
import type { AdminRefusals, RefusalReason } from "./refusals.ts";

/** The Prometheus scrape endpoint on the admin listener (text exposition format). */
const METRICS_ROUTE = "/metrics";

/** Compares tokens in constant time (hashing first so the lengths are equal too). */
function tokenMatches(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * The admin RPC listener's app: every route needs `Authorization: Bearer $ADMIN_TOKEN`.
 * Without a configured token it refuses every call. Refused calls are counted per client address
 * and audited in aggregate (`AdminRefusals`), so a flood of bad tokens cannot flood the audit chain.
 */
export function createAdminApp(deps: {
  adminToken?: string;
  metrics: Metrics;
  logger: Logger;
  routes?: AnyElysia[];
  /** Records `admin.call` (method, route pattern, status) for every accepted call. */
  audit?: AuditTrail;
  /** Refused calls: per-address budget (429 beyond it) and one `admin.refused` entry per window. */
  refusals: AdminRefusals;
  /** Who a call comes from (the peer, or X-Forwarded-For of a trusted proxy). */
  addresses: ClientAddresses;
}) {
  const refused = new WeakSet<Request>();
  // Route patterns and statuses only: never the URL (it may hold a user id), a body or a token.
  const audit = async (event: AuditEvent) => {
    try {
      await deps.audit?.record(event);
    } catch (err) {
      deps.logger.error({ err, action: event.action }, "audit write failed");
    }
  };
  const call = (method: string, route: string | undefined, status: number) =>
    audit({ action: "admin.call", actor: "admin", details: { method, route: route || "unmatched", status } });
  const bodies = jsonBodyGate();
  const app = new Elysia({ name: "clearbox.admin" })
    .use(bodies.plugin)
    .onError(async ({ code, error, set, request, route }) => {
      let failure = frameworkRefusal(code, error);
      if (!failure) {
        deps.logger.error({ err: error }, "admin call failed");
        failure = new DomainError("internal", "internal error");
      }
      const reply = errorReply(failure);
      set.status = reply.status;
      Object.assign(set.headers, reply.headers);
      if (!refused.has(request)) await call(request.method, route, reply.status);
      return reply.body;
    })
    // onRequest, not onBeforeHandle, so unknown paths are refused too and reveal nothing without a token.
    .onRequest(async ({ request, server }) => {
      const token = bearerToken(request.headers.get("authorization") ?? undefined);
      const reason: RefusalReason | undefined = !deps.adminToken
        ? "admin_disabled"
        : !token
          ? "missing_token"
          : !tokenMatches(token, deps.adminToken)
            ? "wrong_token"
            : undefined;
      if (!reason) return;
      refused.add(request);
      // Counted, not written: the window's one entry (and log line) carries the count.
      const retryAfterSeconds = await deps.refusals.refused(deps.addresses.of(request, server), reason);
      if (retryAfterSeconds !== undefined) {
        throw new DomainError("rate_limited", "too many refused admin calls from this address, retry later", {
          retryAfterSeconds,
        });
      }
      if (!deps.adminToken)
        throw new DomainError("unauthorized", "admin RPC is disabled: ADMIN_TOKEN is not set");
      throw new DomainError("unauthorized", "missing or wrong admin token");
    })
    .onAfterHandle({ as: "global" }, async ({ request, route, set }) => {
      const status = typeof set.status === "number" ? set.status : 200;
      // A metrics scrape (Prometheus: every 15 s by default, per node) reads counters that name
      // nobody; an entry for each would be thousands a day in the chain, none of them about
      // personal data. A scrape that fails is still recorded.
      if (route === METRICS_ROUTE && status < 400) return;
      await call(request.method, route, status);
    })
    .get(METRICS_ROUTE, async ({ set }) => {
      set.headers["content-type"] = deps.metrics.registry.contentType;
      return deps.metrics.registry.metrics();
    });
  for (const routes of deps.routes ?? []) app.use(routes);
  bodies.index(app.routes);
  return app;
}
