import type { AnyElysia } from "elysia";
import Redis from "ioredis";
import { AccountService } from "./accounts/service.ts";
import { createAdminApp } from "./admin/app.ts";
import { auditAdminRoutes, buildRopa } from "./audit/index.ts";
import { PostgresAuditTrail } from "./audit/service.ts";
import type { AuditTrail } from "./audit/types.ts";
import { clusterAdminRoutes } from "./cluster/index.ts";
import type { Config } from "./config/index.ts";
import { type Database, openDatabase } from "./db/index.ts";
import { DeviceService } from "./devices/service.ts";
import { CloseCode } from "./gateway/connection.ts";
import { createGdpr, type Gdpr } from "./gdpr/index.ts";
import { GroupService } from "./groups/service.ts";
import { createApp, type ReadinessCheck } from "./http/app.ts";
import { listenerTls, listenerUrl } from "./http/listener.ts";
import { KEY_FETCH_LIMITS, KeyService } from "./keys/service.ts";
import { createMessaging, type Messaging, userKey } from "./messaging/index.ts";
import { createLogger, type Logger } from "./observability/logger.ts";
import { Metrics } from "./observability/metrics.ts";
import { MemoryRateLimiter, type RateLimiter, RedisRateLimiter } from "./ratelimit/index.ts";
import { RetentionJob } from "./retention/index.ts";
import { SessionService } from "./sessions/service.ts";
import { TokenIssuer } from "./sessions/tokens.ts";

/** A running ClearBox node: its listeners, its stores, and how to stop it. */
export interface ClearBoxNode {
  config: Config;
  database: Database;
  logger: Logger;
  metrics: Metrics;
  /** The node's Redis connection when REDIS_URL is set (rate limits; presence and ring reuse it). */
  redis?: Redis;
  rateLimiter: RateLimiter;
  /** Stores, actors and the WebSocket gateway. */
  messaging: Messaging;
  /** The hash-chained, pseudonymised audit trail. */
  audit: AuditTrail;
  /** Erasure, export and receipt signing. */
  gdpr: Gdpr;
  /** Storage limitation: the periodic retention job (src/retention). */
  retention: RetentionJob;
  /** Base URL a local client reaches the public listener at, e.g. http://127.0.0.1:8080 (https with TLS). */
  url: string;
  /** Base URL of the admin listener. */
  adminUrl: string;
  stop(): Promise<void>;
  /** Crash simulation for tests: drops sockets and listeners, no handoff, no offline flush. */
  abort(): Promise<void>;
}

/** Options tests use to embed a node: no process metrics, in-memory PGlite, captured logs. */
export interface NodeOptions {
  /** `null` keeps PGlite in memory (tests); default is config.dataDir. */
  pgliteDir?: string | null;
  logger?: Logger;
  processMetrics?: boolean;
  /** Tests: called after each erasure step; a throw stops the job there, as a crash would. */
  afterErasureStep?: (step: string) => void;
}

/** Builds every component of one node from its configuration and starts both listeners. */
export async function createNode(config: Config, options: NodeOptions = {}): Promise<ClearBoxNode> {
  const started = performance.now();
  const logger = options.logger ?? createLogger({ level: config.logLevel, nodeId: config.nodeId });
  const metrics = new Metrics(config.nodeId, { processMetrics: options.processMetrics });
  const database = await openDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: options.pgliteDir === undefined ? config.dataDir : options.pgliteDir,
  });
  const { db } = database;
  const audit = new PostgresAuditTrail(db);
  const accounts = new AccountService(db, config.passwordHash);
  const devices = new DeviceService(db, audit);
  const tokens = new TokenIssuer(config.jwtSecret, config.accessTokenTtlSeconds);
  const readiness: ReadinessCheck[] = [{ name: database.kind, check: () => database.ping() }];
  let redis: Redis | undefined;
  if (config.redisUrl) {
    redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
    redis.on("error", (err) => logger.warn({ err }, "redis connection error"));
    try {
      await redis.connect();
    } catch (error) {
      redis.disconnect();
      await database.close();
      throw error;
    }
    const client = redis;
    readiness.push({ name: "redis", check: async () => void (await client.ping()) });
  }
  const rateLimiter: RateLimiter = redis
    ? new RedisRateLimiter(redis, config.redisPrefix)
    : new MemoryRateLimiter();
  const sessions = new SessionService(
    db,
    accounts,
    devices,
    tokens,
    config.refreshTokenTtlDays,
    audit,
    rateLimiter,
  );
  const keys = new KeyService(db, rateLimiter, KEY_FETCH_LIMITS, audit);
  const groups = new GroupService(db, audit);
  const messaging = await createMessaging({
    config,
    db,
    redis,
    sessions,
    logger,
    address: `${config.publicHost}:${config.port}`,
  });
  readiness.push(...messaging.readiness);
  const gdpr = await createGdpr({
    db,
    log: messaging.log,
    offline: messaging.offline,
    presence: messaging.presence,
    actors: messaging.actors,
    audit,
    rateLimiter,
    redis,
    redisPrefix: config.redisPrefix,
    logger,
    config,
    sessions,
    accounts,
    afterStep: options.afterErasureStep,
  });
  devices.onAdded((userId) => messaging.service.devicesChanged(userId));
  devices.onRemoved(async (userId, deviceId) => {
    messaging.service.devicesChanged(userId);
    await messaging.actors.ask(userKey(userId), { type: "device.removed", deviceId });
    await messaging.log.eraseDevice(userId, deviceId);
    await messaging.closeSockets(userId, deviceId, CloseCode.deviceRemoved, "device removed");
  });

  const app = createApp({
    accounts,
    devices,
    sessions,
    keys,
    groups,
    gateway: messaging.gateway,
    gdpr: gdpr.routes,
    logger,
    metrics,
    readiness,
  }).listen({
    port: config.port,
    hostname: config.publicHost,
    maxRequestBodySize: 1 << 20,
    tls: listenerTls(config.tls),
  });
  const adminRoutes: AnyElysia[] = [
    clusterAdminRoutes(messaging.actors),
    gdpr.adminRoutes,
    auditAdminRoutes({ audit, ropa: () => buildRopa(config) }),
  ];
  const admin = createAdminApp({
    adminToken: config.adminToken,
    metrics,
    logger,
    routes: adminRoutes,
    audit,
  }).listen({
    port: config.adminPort,
    hostname: config.adminHost,
    tls: listenerTls(config.adminTls),
  });
  const retention = new RetentionJob({
    db,
    log: messaging.log,
    audit,
    retentionDays: config.retentionDays,
    auditRetentionDays: config.auditRetentionDays,
    intervalMs: config.retentionIntervalSeconds * 1000,
    logger,
  });
  retention.start();
  const url = listenerUrl(config.publicHost, Number(app.server?.port), Boolean(config.tls));
  const adminUrl = listenerUrl(config.adminHost, Number(admin.server?.port), Boolean(config.adminTls));
  logger.info(
    {
      // What each listener is bound to, as the operator configured it (0.0.0.0 = every interface).
      listening: {
        public: `${config.publicHost}:${app.server?.port}`,
        admin: `${config.adminHost}:${admin.server?.port}`,
      },
      tls: { public: Boolean(config.tls), admin: Boolean(config.adminTls) },
      url,
      adminUrl,
      database: database.kind,
      startupMs: Math.round(performance.now() - started),
    },
    "clearbox node started",
  );
  return {
    config,
    database,
    logger,
    metrics,
    redis,
    rateLimiter,
    messaging,
    audit,
    gdpr,
    retention,
    url,
    adminUrl,
    async stop() {
      await retention.stop();
      // Sockets first, so every device's unacked envelopes reach its offline queue before the stores close.
      await messaging.gateway.stop();
      await app.stop(true);
      await admin.stop(true);
      await gdpr.stop();
      await messaging.stop();
      await redis?.quit();
      await database.close();
      logger.info("clearbox node stopped");
    },
    async abort() {
      await retention.stop();
      await gdpr.stop();
      await messaging.abort();
      await app.stop(true);
      await admin.stop(true);
      redis?.disconnect();
      await database.close().catch(() => {});
      logger.warn("clearbox node aborted");
    },
  };
}
