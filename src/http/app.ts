import { Elysia } from "elysia";
import { accountRoutes } from "../accounts/index.ts";
import type { AccountService } from "../accounts/service.ts";
import { blockRoutes } from "../blocks/index.ts";
import type { BlockService } from "../blocks/service.ts";
import { deviceRoutes } from "../devices/index.ts";
import type { DeviceService } from "../devices/service.ts";
import type { Gateway } from "../gateway/index.ts";
import type { gdprRoutes } from "../gdpr/index.ts";
import { groupRoutes } from "../groups/index.ts";
import type { GroupService } from "../groups/service.ts";
import { keyRoutes } from "../keys/index.ts";
import type { KeyService } from "../keys/service.ts";
import type { Logger } from "../observability/logger.ts";
import type { Metrics } from "../observability/metrics.ts";
import { type OidcService, oidcRoutes } from "../oidc/index.ts";
import type { ClientAddresses } from "../ratelimit/index.ts";
import { sessionRoutes } from "../sessions/index.ts";
import type { SessionService } from "../sessions/service.ts";
import { type UserDirectory, userRoutes } from "../users/index.ts";
import { DomainError, errorReply, frameworkRefusal } from "./errors.ts";
import { jsonBodyGate } from "./json-body.ts";

type GdprRoutes = ReturnType<typeof gdprRoutes>;

/** A backing service that must answer for the node to be ready. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<void>;
}

/** Everything the public HTTP app needs, built once per node at start-up. */
export interface AppDeps {
  accounts: AccountService;
  devices: DeviceService;
  sessions: SessionService;
  keys: KeyService;
  groups: GroupService;
  /** Exact user lookups by username or id (`GET /v1/users`). */
  users: UserDirectory;
  blocks: BlockService;
  gateway: Gateway;
  /** The GDPR routes (export, erasure, receipts), built with their services in src/gdpr. */
  gdpr: GdprRoutes;
  /** Sign-in with the identity provider; unset when OIDC_ISSUER is not (its routes then answer 404). */
  oidc?: OidcService;
  logger: Logger;
  metrics: Metrics;
  readiness: ReadinessCheck[];
  /** Who a request comes from, for rate limits (TRUSTED_PROXIES). */
  addresses: ClientAddresses;
}

/** How long one readiness answer is given again to later `/readyz` requests (ms). */
export const READINESS_REUSE_MS = 1000;

/**
 * How long one readiness check may take before `/readyz` reports its service `unavailable` (ms):
 * under the Kubernetes probe's `timeoutSeconds` (3, deploy/kubernetes/deployment.yaml). A round's
 * answer is shared by every request arriving meanwhile, so a check that never settles (a query on a
 * connection that died without a reset) would otherwise hold every later `/readyz` with it, after
 * the service answers again too.
 */
export const READINESS_CHECK_TIMEOUT_MS = 2000;

/** Rejects after `ms` unless `check` settled first (the check itself runs on, unobserved). */
async function withinReadinessTimeout(check: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([check, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** What `/readyz` answers: each backing service's state, and whether all answer. */
export interface Readiness {
  ready: boolean;
  services: Record<string, "ok" | "unavailable">;
}

/**
 * Runs the readiness checks for `/readyz`, shared: requests arriving while a round of checks is
 * under way, or within `reuseMs` (READINESS_REUSE_MS) after it ended, get that round's answer.
 * `/readyz` takes no credentials, and each round is a database query and a Redis round trip: one
 * per request let anyone queue thousands of them in front of the node's 10 database connections. A
 * probe (the orchestrator's every few seconds) sees a state at most a second old. Each check is
 * given `timeoutMs` (READINESS_CHECK_TIMEOUT_MS), then counted `unavailable`: a round always ends.
 *
 * At most one call of each check is in flight: a round that finds the previous call of a check
 * still running does not start another, it waits for that one (within `timeoutMs`, then
 * `unavailable`). A check that does not settle (a command queued on a connection that stalled)
 * was started again by every round, each call holding its query, command or socket, so they
 * piled up for as long as the service hung (`test/http/readiness-inflight.test.ts`). The checks the
 * node passes all settle in the end (the database's stall watch, Redis's command timeout), and
 * the round after that starts a fresh call.
 */
export function sharedReadiness(
  checks: readonly ReadinessCheck[],
  logger: Logger,
  timing: { timeoutMs?: number; reuseMs?: number } = {},
): () => Promise<Readiness> {
  const timeoutMs = timing.timeoutMs ?? READINESS_CHECK_TIMEOUT_MS;
  const reuseMs = timing.reuseMs ?? READINESS_REUSE_MS;
  /** The call of each check still in flight, by its index in `checks`. */
  const inFlight = new Map<number, Promise<void>>();
  const call = (index: number, check: () => Promise<void>): Promise<void> => {
    const running = inFlight.get(index);
    if (running) return running;
    const started = (async () => check())().finally(() => {
      if (inFlight.get(index) === started) inFlight.delete(index);
    });
    inFlight.set(index, started);
    return started;
  };
  let round: { answer: Promise<Readiness>; endedAt?: number } | undefined;
  const run = async (): Promise<Readiness> => {
    const results = await Promise.all(
      checks.map(async ({ name, check }, index) => {
        try {
          await withinReadinessTimeout(call(index, check), timeoutMs);
          return [name, "ok"] as const;
        } catch (error) {
          logger.warn({ err: error, service: name }, "readiness check failed");
          return [name, "unavailable"] as const;
        }
      }),
    );
    return { ready: results.every(([, state]) => state === "ok"), services: Object.fromEntries(results) };
  };
  return () => {
    const now = performance.now();
    if (round && (round.endedAt === undefined || now - round.endedAt < reuseMs)) return round.answer;
    const current: { answer: Promise<Readiness>; endedAt?: number } = { answer: run() };
    round = current;
    void current.answer.finally(() => {
      current.endedAt = performance.now();
    });
    return current.answer;
  };
}

/** The public listener's Elysia app: protocol routes, protocol errors, request metrics. */
export function createApp(deps: AppDeps) {
  const { logger, metrics } = deps;
  const readiness = sharedReadiness(deps.readiness, logger);
  const started = new WeakMap<Request, number>();
  const bodies = jsonBodyGate();
  const app = new Elysia({ name: "clearbox.public", normalize: false })
    .use(bodies.plugin)
    .onRequest(({ request }) => {
      started.set(request, performance.now());
    })
    .onAfterResponse({ as: "global" }, ({ request, route, set }) => {
      const begin = started.get(request);
      const label = { method: request.method, route: route || "unmatched" };
      const status = Number(set.status ?? 200);
      const seconds = begin === undefined ? 0 : (performance.now() - begin) / 1000;
      metrics.httpRequests.inc({ ...label, status: String(status) });
      metrics.httpDuration.observe(label, seconds);
      // The route pattern, never the URL: query strings may carry a token (?token= on WebSocket upgrades).
      logger.debug({ ...label, status, ms: Math.round(seconds * 1000) }, "request");
    })
    .onError({ as: "global" }, ({ code, error, set, request }) => {
      let failure = frameworkRefusal(code, error);
      if (!failure) {
        logger.error(
          { err: error, method: request.method, path: new URL(request.url).pathname },
          "unhandled",
        );
        failure = new DomainError("internal", "internal error");
      }
      const reply = errorReply(failure);
      set.status = reply.status;
      Object.assign(set.headers, reply.headers);
      return reply.body;
    })
    .get("/healthz", () => ({ status: "ok" }))
    .get("/readyz", async ({ set }) => {
      const { ready, services } = await readiness();
      if (!ready) set.status = 503;
      return { status: ready ? "ok" : "unavailable", services };
    })
    .use(accountRoutes(deps.accounts, deps.addresses))
    .use(sessionRoutes(deps.sessions, deps.addresses))
    .use(oidcRoutes(deps.oidc, deps.addresses))
    .use(deviceRoutes(deps.devices, deps.sessions))
    .use(keyRoutes(deps.keys, deps.sessions))
    .use(groupRoutes(deps.groups, deps.sessions))
    .use(userRoutes(deps.users, deps.sessions))
    .use(blockRoutes(deps.blocks, deps.sessions))
    .use(deps.gateway.routes())
    .use(deps.gdpr);
  bodies.index(app.routes);
  return app;
}

export type App = ReturnType<typeof createApp>;
