import type Redis from "ioredis";
import {
  type ActorSystem,
  BrokerUnreachableError,
  closeRedis,
  createActorNode,
  GROUP_KIND,
  groupActorFactory,
  REDIS_STALL_LIMITS,
  USER_KIND,
  userActorFactory,
  userKey,
} from "../actors/index.ts";
import { registrationAdminRoutes } from "./accounts/index.ts";
import { PasswordThrottle } from "./accounts/password-throttle.ts";
import { RegistrationGate, RegistrationTokens } from "./accounts/registration.ts";
import { AccountService } from "./accounts/service.ts";
import { createAdminApp } from "./admin/app.ts";
import { AdminRefusals } from "./admin/refusals.ts";
import { auditAdminRoutes, buildRopa } from "./audit/index.ts";
import { PostgresAuditTrail } from "./audit/service.ts";
import type { AuditTrail } from "./audit/types.ts";
import { BackupService, backupAdminRoutes } from "./backup/index.ts";
import { BlockService } from "./blocks/service.ts";
import { clusterAdminRoutes } from "./cluster/index.ts";
import { type Config, makePrivateDir, reasonOf, StartupError } from "./config/index.ts";
import { type Database, openDatabase } from "./db/index.ts";
import type { PglitePreparation } from "./db/pglite-prepare.ts";
import { DeviceService } from "./devices/service.ts";
import { ErasureFence } from "./fence/index.ts";
import { FENCE_KIND, FenceLink } from "./gateway/fence-link.ts";
import { GATEWAY_KIND, Gateway, type GatewayCommand, NodeLink, SocketRegistry } from "./gateway/index.ts";
import { createGdpr, ErasureLedger, type Gdpr } from "./gdpr/index.ts";
import { PresenceAudience } from "./groups/relations.ts";
import { GroupService } from "./groups/service.ts";
import { createApp, type ReadinessCheck } from "./http/app.ts";
import { advertisedAddress, listenerTls, listenerUrl } from "./http/listener.ts";
import { KEY_FETCH_LIMITS, KeyService } from "./keys/service.ts";
import type { EnvelopeLog } from "./messaging/envelope-log.ts";
import { PostgresGroupDirectory } from "./messaging/group-directory.ts";
import { GroupExpansionSweep } from "./messaging/group-expansion-sweep.ts";
import { ListChangeChannel } from "./messaging/list-changes.ts";
import type { OfflineQueue } from "./messaging/offline-queue.ts";
import type { Presence } from "./messaging/presence.ts";
import { sweepIdleQueues } from "./messaging/queue-sweep.ts";
import { LISTS_KEPT_MS, MessagingService } from "./messaging/service.ts";
import { decodedLength, StorageQuota } from "./messaging/storage-quota.ts";
import { clusterPrefix, openEmbeddedLog, openMessagingStores } from "./messaging/stores.ts";
import { createLogger, type Logger } from "./observability/logger.ts";
import { Metrics } from "./observability/metrics.ts";
import { OidcService, oidcAdminRoutes, RelyingParty } from "./oidc/index.ts";
import { CloseCode, MAX_BODY_BYTES } from "./protocol/index.ts";
import {
  ClientAddresses,
  CountingRateLimiter,
  MemoryRateLimiter,
  type RateLimiter,
  RedisRateLimiter,
} from "./ratelimit/index.ts";
import { RetentionJob } from "./retention/index.ts";
import { SessionService } from "./sessions/service.ts";
import { TokenIssuer } from "./sessions/tokens.ts";
import {
  USER_LOOKUP_ACCOUNT_LIMIT,
  USER_LOOKUP_LIMIT,
  UserDirectory,
  userAdminRoutes,
} from "./users/index.ts";

/** A running ClearBox node: its listeners, its stores, and how to stop it. */
export interface ClearBoxNode {
  config: Config;
  database: Database;
  logger: Logger;
  metrics: Metrics;
  /** The node's Redis connection when REDIS_URL is set (rate limits; presence and ring reuse it). */
  redis?: Redis;
  rateLimiter: RateLimiter;
  /** The durable envelope log (PostgreSQL/PGlite or MongoDB). */
  log: EnvelopeLog;
  /** Per-device offline queues (RabbitMQ, or the log in the embedded default). */
  offline: OfflineQueue;
  presence: Presence;
  /** This node of the actor system (user, group and pinned gateway actors). */
  actors: ActorSystem;
  /** Sends, acks and device connections, between the gateway and the actors. */
  messaging: MessagingService;
  /** Device and block changes from and to other nodes (Redis with a shared database; else undefined). */
  listChanges?: ListChangeChannel;
  /** Logins, refresh-token rotation, revocation and authentication of access tokens. */
  sessions: SessionService;
  /** The WebSocket gateway of this node. */
  gateway: Gateway;
  /** The hash-chained, pseudonymised audit trail. */
  audit: AuditTrail;
  /** Refused admin calls: per-address budget and one audit entry per window (`flush()` closes it). */
  adminRefusals: AdminRefusals;
  /** Erasure, export and receipt signing. */
  gdpr: Gdpr;
  /** Storage limitation: the periodic retention job (src/retention). */
  retention: RetentionJob;
  /** Base URL a local client reaches the public listener at, e.g. http://127.0.0.1:8080 (https with TLS). */
  url: string;
  /** Base URL of the admin listener. */
  adminUrl: string;
  /**
   * Every route each listener serves, as `"<METHOD> <path>"` with Elysia's path patterns
   * (e.g. `"GET /v1/keys/:userId"`; the WebSocket upgrade is `"GET /v1/ws"`). Read by the test
   * that holds docs/PROTOCOL.md to the code.
   */
  routes: { public: string[]; admin: string[] };
  stop(): Promise<void>;
  /** Crash simulation for tests: drops sockets and listeners, no handoff, no offline flush. */
  abort(): Promise<void>;
}

/**
 * Runs `listen`, turning a bind failure into a one-line StartupError naming the variable to fix:
 * the port's when it is in use (by another process, or by this node's public listener when
 * `publicPort` equals it) or privileged (EACCES), the host's when it is not an address of this
 * machine (EADDRNOTAVAIL, or a name that resolves to none). Anything else is thrown as it came.
 */
function listenOrExplain(
  listener: { portVariable: string; port: number; hostVariable: string; host: string; publicPort?: number },
  listen: () => unknown,
): void {
  const { portVariable, port, hostVariable, host, publicPort } = listener;
  try {
    listen();
  } catch (error) {
    const { code, syscall } = error as { code?: unknown; syscall?: unknown };
    if (code === "EADDRINUSE" || /in use/i.test(String((error as Error)?.message))) {
      const by =
        port !== 0 && port === publicPort
          ? "is PORT too: this node's public listener holds it"
          : "is already in use by another process";
      throw new StartupError(portVariable, `port ${port} ${by}`);
    }
    // Only the bind's own errors: reading a TLS file in `listen` fails with syscall "open".
    if (syscall !== "listen") throw error;
    if (code === "EACCES") {
      throw new StartupError(
        portVariable,
        `port ${port} needs a privilege this process lacks (EACCES): use a port above 1023 behind a proxy, or grant CAP_NET_BIND_SERVICE`,
      );
    }
    // Bun reports a host name that resolves to nothing as ENOENT from listen.
    if (code === "EADDRNOTAVAIL" || code === "ENOENT" || code === "ENOTFOUND") {
      throw new StartupError(hostVariable, `${host} is not an address of this machine (${code})`);
    }
    throw error;
  }
}

/** `"<METHOD> <path>"` of each of an Elysia app's routes, sorted; Elysia's WebSocket routes (method `WS`) are the GET upgrade they answer. */
function routeList(routes: readonly { method: string; path: string }[]): string[] {
  const list = routes.map(
    ({ method, path }) => `${method.toUpperCase() === "WS" ? "GET" : method.toUpperCase()} ${path}`,
  );
  return [...new Set(list)].sort();
}

/** Options tests use to embed a node: no process metrics, in-memory PGlite, captured logs. */
export interface NodeOptions {
  /** `null` keeps PGlite in memory (tests); default is config.dataDir. */
  pgliteDir?: string | null;
  /** The embedded database's preparation for config.dataDir, begun before this was called (src/main.ts). */
  pglite?: PglitePreparation;
  logger?: Logger;
  processMetrics?: boolean;
  /** Tests: called after each erasure step; a throw stops the job there, as a crash would. */
  afterErasureStep?: (step: string) => void;
  /** Tests: delay before a failed erasure job's first retry, in ms (ErasureDeps.retryBaseMs). */
  erasureRetryBaseMs?: number;
  /**
   * Tests: false makes the node leave its group messages unexpanded (no background expansion, no
   * sweep), as a node that dies right after `accepted` would; acks, marks and reads still expand.
   */
  expandGroups?: boolean;
  /**
   * Called once the node serves, just before its `clearbox node started` line is logged (src/main.ts
   * installs its signal handlers there: whoever reads that line may stop the node at once).
   */
  onListening?: () => void;
}

/**
 * The composition root: builds every component of one node from its configuration, in this order,
 * and starts it. docs/ARCHITECTURE.md walks the same order.
 *
 * 1. stores — database (PostgreSQL or PGlite, migrated), Redis, the messaging stores (envelope log,
 *    offline queue, presence), rate limiter, audit trail;
 * 2. actor system — this node's member of the ring (Redis + RabbitMQ, or in memory), not started;
 * 3. services — accounts, devices, sessions, keys, groups, messaging, GDPR, retention;
 * 4. gateway — this node's socket registry, the node link that reaches sockets on any node, and the
 *    WebSocket gateway; the actor kinds are registered with their ports (user actors push through
 *    the node link, group actors read the group directory);
 * 5. routes — the public app (HTTP + `/v1/ws`) and the admin app;
 * 6. start — the actor system joins the ring, both listeners open, erasures resume, retention runs.
 */
export async function createNode(config: Config, options: NodeOptions = {}): Promise<ClearBoxNode> {
  const started = performance.now();
  const logger =
    options.logger ??
    createLogger({ level: config.logLevel, nodeId: config.nodeId, format: config.logFormat });
  const metrics = new Metrics(config.nodeId, { processMetrics: options.processMetrics });
  // Before anything writes there: the data directory is the owner's alone (0700).
  makePrivateDir(config.dataDir);
  // Read before anything opens: a damaged erasure ledger stops the start here, holding nothing.
  const ledger = new ErasureLedger(config.erasureLedgerFile);
  ledger.keys();

  // 1. Stores.
  const embeddedDir = options.pgliteDir === undefined ? config.dataDir : options.pgliteDir;
  // The embedded log's writer thread starts and migrates on its own thread while PGlite opens on this one.
  const embeddedLog =
    config.databaseUrl || config.mongodbUrl
      ? undefined
      : openEmbeddedLog(embeddedDir, metrics.commit, options.expandGroups ?? true);
  // Its failure surfaces where openMessagingStores awaits it, not as an unhandled rejection meanwhile.
  embeddedLog?.catch(() => {});
  // Closes the embedded log when a step fails before openMessagingStores has taken it.
  const dropEmbeddedLog = () => embeddedLog?.then((log) => log.close()).catch(() => {});
  const database = await openDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: embeddedDir,
    pglite: options.pglite,
    stallMs: config.databaseStallMs,
  }).catch(async (error: unknown) => {
    await dropEmbeddedLog();
    if (!config.databaseUrl) throw error;
    throw new StartupError(
      "DATABASE_URL",
      `could not open PostgreSQL and apply the migrations: ${reasonOf(error)}`,
    );
  });
  const { db } = database;
  const readiness: ReadinessCheck[] = [{ name: database.kind, check: () => database.ping() }];
  let redis: Redis | undefined;
  if (config.redisUrl) {
    // Reconnect attempts at most 500 ms apart (ioredis's default grows to 2 s): socket leases and
    // rate limits are back soon after Redis is.
    // Imported here, not at the top: the embedded default (no REDIS_URL) never loads ioredis.
    const { default: Redis } = await import("ioredis");
    redis = new Redis(config.redisUrl, {
      lazyConnect: true,
      maxRetriesPerRequest: 2,
      retryStrategy: (times) => Math.min(times * 50, 500),
      ...REDIS_STALL_LIMITS,
    });
    let lastRedisError: unknown;
    redis.on("error", (err) => {
      lastRedisError = err;
      logger.warn({ err }, "redis connection error");
    });
    try {
      await redis.connect();
    } catch (error) {
      redis.disconnect();
      await dropEmbeddedLog();
      await database.close();
      throw new StartupError("REDIS_URL", `could not connect to Redis: ${reasonOf(lastRedisError ?? error)}`);
    }
    const client = redis;
    readiness.push({ name: "redis", check: async () => void (await client.ping()) });
  }
  const stores = await openMessagingStores(
    config,
    database,
    redis,
    embeddedDir,
    metrics.commit,
    logger,
    options.expandGroups ?? true,
    embeddedLog,
  ).catch(async (error: unknown) => {
    redis?.disconnect();
    await database.close().catch(() => {});
    if (error instanceof BrokerUnreachableError) throw new StartupError("AMQP_URL", error.message);
    if (config.mongodbUrl && /mongo/i.test(String((error as Error)?.name))) {
      throw new StartupError("MONGODB_URL", `could not connect to MongoDB: ${reasonOf(error)}`);
    }
    throw error;
  });
  readiness.push(...stores.readiness);
  const { log, offline, presence } = stores;
  metrics.commitOperations(log.commitOperations ?? []);
  // Every refusal is counted by its rule's name for /metrics.
  const rateLimiter: RateLimiter = new CountingRateLimiter(
    redis ? new RedisRateLimiter(redis, config.redisPrefix) : new MemoryRateLimiter(),
    (rule) => metrics.tallies.refuse(rule),
  );
  const audit = new PostgresAuditTrail(db, undefined, { retentionDays: config.auditRetentionDays });
  // Users whose erasure has started (src/fence): shared by every part of this node that must refuse them.
  const fence = new ErasureFence();

  // 2. Actor system (kinds are registered in step 4, before it starts).
  let gateway: Gateway | undefined;
  const actors = createActorNode({
    nodeId: config.nodeId,
    address: advertisedAddress(config.publicHost, config.port),
    redisUrl: redis ? config.redisUrl : undefined,
    amqpUrl: config.amqpUrl,
    prefix: clusterPrefix(config),
    heartbeatMs: config.clusterHeartbeatMs,
    ttlMs: config.clusterHeartbeatMs * 3,
    startupWaitMs: config.startupWaitMs,
    connections: () => gateway?.connections ?? 0,
    logger,
  });

  if (config.amqpUrl && redis) {
    readiness.push({
      name: "rabbitmq-transport",
      check: async () => {
        if (!actors.transportConnected) throw new Error("node-to-node transport lost its broker");
      },
    });
  }

  // 3. Services.
  const addresses = new ClientAddresses(config.trustedProxies);
  const logins = new PasswordThrottle(rateLimiter, config.loginLimits);
  const registrationTokens = new RegistrationTokens(db);
  const accounts = new AccountService(db, {
    throttle: logins,
    registration: new RegistrationGate(
      config.registration,
      registrationTokens,
      rateLimiter,
      config.registrationsPerAddress,
    ),
    cost: config.passwordHash,
    erasing: fence,
  });
  const devices = new DeviceService(db, audit, logger);
  const tokens = new TokenIssuer(config.jwtSecret, config.accessTokenTtlSeconds);
  // Every revocation closes the device's sockets on any node through the node link (4401), built
  // with the gateway in step 4: the one revocation port.
  let deviceSockets: NodeLink | undefined;
  const sessions = new SessionService(db, accounts, devices, tokens, {
    refreshTtlDays: config.refreshTokenTtlDays,
    refreshGraceSeconds: config.refreshGraceSeconds,
    audit,
    closeSockets: async (userId, deviceId, generationBelow) =>
      deviceSockets?.close({ userId, deviceId, generationBelow }, CloseCode.revoked, "tokens revoked"),
    logger,
    erasing: fence,
  });
  const oidc = config.oidc
    ? new OidcService({
        db,
        rp: new RelyingParty(config.oidc, logger),
        sessions,
        audit,
        secret: config.jwtSecret,
        logger,
        limiter: rateLimiter,
        deviceSignInsPerAddress: config.oidcDeviceSignInsPerAddress,
      })
    : undefined;
  const keys = new KeyService(db, rateLimiter, KEY_FETCH_LIMITS, audit, fence);
  const groups = new GroupService(db, audit, fence, rateLimiter);
  const users = new UserDirectory(db, rateLimiter, USER_LOOKUP_LIMIT, USER_LOOKUP_ACCOUNT_LIMIT, fence);
  const blocks = new BlockService(db, rateLimiter);
  // PGlite is in this process: every device and block change goes through the services here. On a
  // shared database the other nodes publish theirs over Redis: lists are kept while that is live.
  let listChanges: ListChangeChannel | undefined;
  // Sends spend it from leases of the shared counter; given back at stop (below).
  const quota = new StorageQuota(rateLimiter, config.storedBytesPerAccountPerDay, logger);
  const messaging = new MessagingService(
    db,
    log,
    actors,
    Date.now,
    undefined,
    fence,
    database.kind === "pglite"
      ? () => Number.POSITIVE_INFINITY
      : () => (listChanges?.live ? LISTS_KEPT_MS : 0),
    quota,
  );
  if (redis && database.kind !== "pglite") {
    listChanges = new ListChangeChannel(redis, config.redisPrefix, config.nodeId, messaging, logger);
  }
  // The erasure fence across the ring, through the pinned fence actors registered in step 4.
  const fenceLink = new FenceLink({
    nodeId: config.nodeId,
    actors,
    fence,
    messaging,
    gateway: () => gateway,
    logger,
  });
  const gdpr = await createGdpr({
    db,
    nodeId: config.nodeId,
    liveNodes: () => actors.ringMembers(),
    log,
    offline,
    presence,
    live: {
      fence: (userId) => fenceLink.fenceEverywhere(userId),
      eraseUser: (userId, erasureId) => messaging.eraseUser(userId, erasureId),
    },
    fence,
    logins,
    audit,
    rateLimiter,
    redis,
    redisPrefix: config.redisPrefix,
    logger,
    config,
    sessions,
    accounts,
    oidc,
    addresses,
    afterStep: options.afterErasureStep,
    retryBaseMs: options.erasureRetryBaseMs,
    onCompleted: () => metrics.erasuresCompleted.inc(),
    ledger,
    ledgerCoversDatabase: database.kind === "pglite",
  });
  const backups = new BackupService({ database, log, dir: config.backupDir, nodeId: config.nodeId, logger });
  const retention = new RetentionJob({
    db,
    log,
    audit,
    retentionDays: config.retentionDays,
    auditRetentionDays: config.auditRetentionDays,
    intervalMs: config.retentionIntervalSeconds * 1000,
    logger,
    onReport: (report) => {
      metrics.retentionRemovals.inc({ store: "envelopes" }, report.envelopes);
      metrics.retentionRemovals.inc({ store: "refresh_tokens" }, report.refreshTokens);
      metrics.retentionRemovals.inc({ store: "oidc_sign_in_codes" }, report.oidcSignInCodes);
      metrics.retentionRemovals.inc({ store: "oidc_logout_tokens" }, report.oidcLogoutTokens);
      metrics.retentionRemovals.inc({ store: "handed_out_pre_keys" }, report.handedOutPreKeys);
      metrics.retentionRemovals.inc({ store: "audit_entries" }, report.auditEntries);
      if (report.backups !== null) metrics.retentionRemovals.inc({ store: "backups" }, report.backups);
    },
    finishDeviceRemovals: () => devices.finishRemovals(),
    resumeErasures: () => gdpr.erasures.resumePending(),
    pruneBackups: (nowMs) => {
      const pruned = backups.prune(config.backupRetentionDays, nowMs);
      return pruned.removed.length + pruned.partials.length;
    },
    ...(offline.kind === "rabbitmq"
      ? {
          sweepIdleQueues: (stopped: () => boolean) =>
            sweepIdleQueues({ db, offline, queueEmptied: (d) => messaging.queueEmptied(d), stopped }),
        }
      : {}),
  });

  // 4. Gateway, and the actor kinds with their ports.
  const registry = new SocketRegistry();
  const link = new NodeLink({
    nodeId: config.nodeId,
    actors,
    registry,
    presence,
    onVanished: (device, connectionId) => messaging.deviceDisconnected(device, config.nodeId, connectionId),
    drainAgain: (userId, deviceId, connectionId) =>
      gateway?.drainAgain(userId, deviceId, connectionId) ?? false,
    onPushLost: (device, connectionId) => messaging.pushLost(device, connectionId),
    logger,
  });
  deviceSockets = link;
  gateway = new Gateway({
    nodeId: config.nodeId,
    sessions,
    messaging,
    offline,
    presence,
    logger,
    registry,
    link,
    rateLimit: { perSecond: config.deviceRateLimit, burst: config.deviceRateLimit * 2 },
    presenceLeaseMs: config.presenceLeaseSeconds * 1000,
    pingIntervalMs: config.wsPingIntervalMs,
    revalidateIntervalMs: config.wsRevalidateIntervalMs,
    watchLimit: config.presenceWatchesPerNode,
    accountWatchLimit: config.presenceWatchesPerAccount,
    audience: new PresenceAudience(db),
    tallies: metrics.tallies,
    fence,
    connectLimiter: rateLimiter,
    connectsPerDevice: config.wsConnectsPerDevice,
    addresses,
  });
  if (redis) {
    // Redis without persistence comes back empty: the socket leases go with it (the ring's keys
    // are the membership's own business, actors/redis-membership.ts).
    const openGateway = gateway;
    let redisLost = false;
    redis.on("close", () => {
      redisLost = true;
    });
    redis.on("ready", () => {
      if (!redisLost) return;
      redisLost = false;
      openGateway
        .reassertPresence()
        .catch((error) =>
          logger.warn({ err: error }, "could not re-assert presence after a redis reconnect"),
        );
      // Closes sent while this node's leases were missing or its Redis away never reached it.
      void openGateway.revalidate();
    });
  }
  const openGateway = gateway;
  metrics.observe({
    actors,
    connections: () => openGateway.connections,
    erasures: () => gdpr.erasures.jobStats(),
    deviceRemovals: () => devices.removalStats(),
  });
  const clock = { now: Date.now };
  const groupSweep = new GroupExpansionSweep({
    log,
    tell: (userIds, message) => actors.tellMany(userIds.map(userKey), message),
    logger,
  });
  actors
    .register(
      USER_KIND,
      userActorFactory({
        log,
        // The actors' flushes to offline queues are counted here (the gateway counts the drains).
        offline: {
          flush: async (userId, deviceId, envelopes) => {
            await offline.flush(userId, deviceId, envelopes);
            metrics.tallies.queuedOffline += envelopes.length;
          },
          purge: (userId, deviceId) => offline.purge(userId, deviceId),
          remove: (userId, deviceId) => offline.remove(userId, deviceId),
        },
        sockets: link,
        clock,
        recoveryMs: config.clusterHeartbeatMs * 9,
        fenced: (userId) => fence.has(userId),
      }),
    )
    .register(
      GROUP_KIND,
      groupActorFactory({
        // Device changes as messaging hears of them (here, and other nodes' over the list-change
        // channel): a group send checks again, once stored, a member device removed meanwhile.
        directory: new PostgresGroupDirectory(db, fence, {
          get deviceChangeSeq() {
            return messaging.deviceChangeSeq;
          },
          devicesChangedSince: (userId, seq) => messaging.devicesChangedSince(userId, seq),
          eraseDevice: (userId, deviceId) => log.eraseDevice(userId, deviceId),
        }),
        log,
        clock,
        // A group send is stored once per recipient device: charged so, by the group's actor.
        quota: {
          bodyBytes: decodedLength,
          charge: (userId, bytes) => quota.charge(userId, bytes),
          refund: (userId, bytes) => quota.refund(userId, bytes),
        },
      }),
    )
    .registerPinned(GATEWAY_KIND, link.actorFactory, {
      orphaned: (command) => link.orphaned(command as GatewayCommand),
    })
    .registerPinned(FENCE_KIND, fenceLink.actorFactory);
  // Other nodes are told before the change's HTTP reply (bounded wait, src/messaging/list-changes.ts).
  devices.onAdded(async (userId) => {
    messaging.devicesChanged(userId);
    await listChanges?.publishDevices(userId);
  });
  blocks.onChanged(async (blocker, blocked) => {
    messaging.blocksChanged(blocker, blocked);
    gateway?.relationsChanged([blocker, blocked]);
    await listChanges?.publishBlocks(blocker, blocked);
  });
  groups.onMembershipChanged((users) => gateway?.relationsChanged(users));
  devices.onRemoved(async (userId, deviceId) => {
    await listChanges?.publishDevices(userId);
    // The row is gone already and a retry of the removal answers 404: each step runs, in this
    // order, even when one before it failed (the user actor's node unreachable must not keep the
    // device's envelopes in the log or its sockets open); the first failure is thrown at the end,
    // and the retention job runs every step again later (DeviceService.finishRemovals). Each step
    // is idempotent.
    const [failure] = await runEach([
      ["user actor", () => messaging.deviceRemoved(userId, deviceId)],
      ["log", () => log.eraseDevice(userId, deviceId)],
      ["sockets", () => link.close({ userId, deviceId }, CloseCode.deviceRemoved, "device removed")],
    ]);
    if (failure) throw failure.error;
  });

  // 5. Routes.
  const app = createApp({
    accounts,
    devices,
    sessions,
    keys,
    groups,
    users,
    blocks,
    gateway,
    gdpr: gdpr.routes,
    oidc,
    logger,
    metrics,
    readiness,
    addresses,
  });
  const adminRefusals = new AdminRefusals({ audit, limiter: rateLimiter, logger });
  const admin = createAdminApp({
    adminToken: config.adminToken,
    metrics,
    logger,
    refusals: adminRefusals,
    addresses,
    routes: [
      clusterAdminRoutes(actors),
      gdpr.adminRoutes,
      userAdminRoutes(users),
      registrationAdminRoutes(registrationTokens),
      auditAdminRoutes({ audit, ropa: () => buildRopa(config) }),
      backupAdminRoutes(backups),
      ...(oidc ? [oidcAdminRoutes(oidc)] : []),
    ],
    audit,
  });

  // 6. Start. A step that fails releases what the steps before it opened (the actor system's
  // broker and Redis connections, the stores, a listener already bound) before the error goes up:
  // an embedding process (tests) goes on without them, and nothing of a node that never started
  // keeps reconnecting or serving.
  let unwatchGone = () => {};
  /**
   * Closes what steps 1–6 opened, in order, each step even when one before it failed (a service
   * down, e.g. Redis answering MaxRetriesPerRequestError): the failure is logged under `failing`
   * and the rest still closes. `stopActors`: a graceful `actors.stop()` (handoff) for a node that
   * ran, `actors.abort()` after a failed start. Returns the names of the steps that failed.
   */
  const closeAll = async (stopActors: () => Promise<unknown>, failing: string): Promise<string[]> => {
    unwatchGone();
    const failures = await runEach(
      [
        ["retention", () => retention.stop()],
        ["group sweep", () => groupSweep.stop()],
        // Sockets first, so every device's unacked envelopes reach its offline queue before the stores
        // close. Its presence-renewal and ping timers run from its construction (step 4).
        ["gateway", () => openGateway.stop()],
        // A start that failed early had not bound them.
        ["public listener", () => app.server && app.stop(true)],
        ["admin listener", () => admin.server && admin.stop(true)],
        ["admin refusals", () => adminRefusals.stop()],
        ["gdpr", () => gdpr.stop()],
        ["actors", stopActors],
        // No send comes after the sockets and the group actors (which charge group sends, asked from
        // other nodes too until they are handed off): what this node leased of each account's quota goes back.
        ["storage quota", () => quota.close()],
        ["stores", () => stores.close()],
        ["list changes", () => listChanges?.close()],
        ["redis", () => closeRedis(redis)],
        ["database", () => database.close()],
      ],
      ({ step, error }) => logger.warn({ err: error, step }, failing),
    );
    return failures.map((f) => f.step);
  };
  try {
    try {
      await actors.start();
    } catch (error) {
      if (error instanceof BrokerUnreachableError) throw new StartupError("AMQP_URL", error.message);
      // The membership's Redis commands fail after their retries while Redis is away.
      if (
        config.redisUrl &&
        /redis|MaxRetriesPerRequest|ECONNREFUSED/i.test(
          `${(error as Error)?.name} ${(error as Error)?.message}`,
        )
      ) {
        throw new StartupError("REDIS_URL", `could not join the cluster through Redis: ${reasonOf(error)}`);
      }
      throw error;
    }
    await listChanges?.start();
    // Accounts erased after the backup this database was restored from go before anyone can sign in.
    await gdpr.erasures.replayLedger();
    // The fence's durable marks (pending erasures, replayed ones included), before a listener opens.
    await fence.load(db);
    // reusePort off (Elysia turns it on): a second node on a port in use must fail, not share it.
    listenOrExplain(
      { portVariable: "PORT", port: config.port, hostVariable: "PUBLIC_HOST", host: config.publicHost },
      () =>
        app.listen({
          port: config.port,
          hostname: config.publicHost,
          maxRequestBodySize: MAX_BODY_BYTES,
          tls: listenerTls(config.tls),
          websocket: gateway.websocket,
          reusePort: false,
        }),
    );
    const adminListener = {
      portVariable: "ADMIN_PORT",
      port: config.adminPort,
      hostVariable: "ADMIN_HOST",
      host: config.adminHost,
      publicPort: config.port,
    };
    listenOrExplain(adminListener, () =>
      admin.listen({
        port: config.adminPort,
        hostname: config.adminHost,
        // Bun's default is 128 MiB; the admin RPC takes small JSON bodies only.
        maxRequestBodySize: MAX_BODY_BYTES,
        tls: listenerTls(config.adminTls),
        reusePort: false,
      }),
    );
    // A node that went away without telling (killed, frozen, cut off) sent no disconnect for its
    // sockets: sockets here that replaced one of them read their offline queue again.
    const unwatchNodesGone = actors.onNodesGone((gone) => {
      const sockets = openGateway.nodesGone(gone);
      if (sockets > 0) logger.info({ ...gone, sockets }, "sockets re-read their queue after nodes went away");
    });
    // Erasures a gone node was running are taken over by one survivor (a claim in the database), at
    // once: a node that died, and one that stopped gracefully (it released its claims before it
    // left, `ErasureService.stop`). Only deaths were watched, and a clean leave is not one, so its
    // job waited for the next retention pass (hourly by default) or some node's start.
    const unwatchMembersGone = actors.onMembersGone((gone) => {
      void gdpr.erasures
        .resumePending(gone)
        .catch((error: unknown) => logger.warn({ err: error }, "could not take over erasures of gone nodes"));
    });
    unwatchGone = () => {
      unwatchNodesGone();
      unwatchMembersGone();
    };
    await gdpr.start();
    retention.start();
    if (options.expandGroups ?? true) groupSweep.start();
  } catch (error) {
    // The actors dropped as a crash would (what the inbox held stays there), not stopped: a
    // graceful stop waits for transfers being handled, and one that arrived before the first ring
    // waits for it for ever when the join failed.
    await closeAll(() => actors.abort(), "release after a failed start: step failed");
    throw error;
  }
  const url = listenerUrl(config.publicHost, Number(app.server?.port), Boolean(config.tls));
  const adminUrl = listenerUrl(config.adminHost, Number(admin.server?.port), Boolean(config.adminTls));
  options.onListening?.();
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
  // A first `npm start` has no ADMIN_TOKEN: say so at start, not when the operator's first backup is refused.
  if (!config.adminToken) {
    logger.warn(
      "ADMIN_TOKEN is not set: the admin RPC refuses every call (metrics, backups, the operator's export and erasure)",
    );
  }
  // The Art. 30 record names its controller from the configuration: a production node without it
  // serves a record naming nobody, which the DPO learned only by reading GET /admin/v1/ropa.
  const unnamed = [
    ...(config.controllerName ? [] : ["CONTROLLER_NAME"]),
    ...(config.dpoContact ? [] : ["DPO_CONTACT"]),
  ];
  if (config.env === "production" && unnamed.length > 0) {
    logger.warn(
      { unset: unnamed },
      "the record of processing (GET /admin/v1/ropa) names no controller or DPO contact: set CONTROLLER_NAME and DPO_CONTACT",
    );
  }

  return {
    config,
    database,
    logger,
    metrics,
    redis,
    rateLimiter,
    log,
    offline,
    presence,
    actors,
    messaging,
    listChanges,
    sessions,
    gateway: openGateway,
    audit,
    adminRefusals,
    gdpr,
    retention,
    url,
    adminUrl,
    routes: { public: routeList(app.routes), admin: routeList(admin.routes) },
    async stop() {
      const failed = await closeAll(() => actors.stop(), "shutdown step failed");
      if (failed.length > 0) logger.warn({ failed }, "clearbox node stopped; some steps failed");
      else logger.info("clearbox node stopped");
    },
    async abort() {
      unwatchGone();
      await retention.stop();
      await groupSweep.stop();
      await gdpr.stop({ releaseClaims: false });
      quota.abort();
      await actors.abort();
      await stores.close();
      await app.stop(true);
      await admin.stop(true);
      await listChanges?.close();
      redis?.disconnect();
      await database.close().catch(() => {});
      logger.warn("clearbox node aborted");
    },
  };
}

/**
 * Runs `steps` one after another, each even when one before it failed (threw or rejected), and
 * returns the failures in step order; `onFailure` hears each as it happens. For work whose parts
 * must all be attempted: a node's shutdown, a removed device's follow-ups.
 */
async function runEach(
  steps: [step: string, run: () => unknown][],
  onFailure?: (failure: { step: string; error: unknown }) => void,
): Promise<{ step: string; error: unknown }[]> {
  const failures: { step: string; error: unknown }[] = [];
  for (const [step, run] of steps) {
    try {
      await run();
    } catch (error) {
      failures.push({ step, error });
      onFailure?.({ step, error });
    }
  }
  return failures;
}
