import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { loadConfig } from "../../src/config/index.ts";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { type ClearBoxNode, createNode } from "../../src/node.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { deleteMatching, globLiteral } from "../../src/redis/delete-matching.ts";
import { runPrefix, stackEnv } from "./cluster-env.ts";
import { createTestDatabase, type TestDatabase } from "./postgres.ts";
import { waitUntil } from "./ws.ts";

/** Deletes every Redis key under `prefix` (SCAN + UNLINK). */
async function deleteKeys(url: string, prefix: string): Promise<void> {
  const { default: Redis } = await import("ioredis");
  const redis = new Redis(url, { maxRetriesPerRequest: 2 });
  try {
    await deleteMatching(redis, `${globLiteral(prefix)}*`);
  } finally {
    redis.disconnect();
  }
}

/** The stores a suite can run against: the embedded default and a real PostgreSQL server. */
export const BACKENDS = ["pglite", "postgres"] as const;
export type Backend = (typeof BACKENDS)[number];

export const ADMIN_TOKEN = "test-admin-token-0123456789";

/** A node started for a test, with its captured log lines and a way to tear everything down. */
export interface TestNode extends ClearBoxNode {
  logs: string[];
  dataDir: string;
  teardown(): Promise<void>;
}

/**
 * Starts a node on random ports. `pglite` keeps its data in a fresh temporary DATA_DIR (or `dataDir`
 * when given, to test restarts); `postgres` gets a database of its own, dropped on teardown.
 */
export async function startTestNode(
  backend: Backend,
  options: {
    env?: Record<string, string>;
    dataDir?: string;
    keepData?: boolean;
    /** Reuse this database (a restart); the caller drops it. */
    database?: TestDatabase;
    /** Called after each erasure step; a throw stops the job there, as a crash would. */
    afterErasureStep?: (step: string) => void;
    /** Delay before a failed erasure job's first retry, in ms (NodeOptions.erasureRetryBaseMs). */
    erasureRetryBaseMs?: number;
    /** False: the node leaves group messages unexpanded (NodeOptions.expandGroups). */
    expandGroups?: boolean;
  } = {},
): Promise<TestNode & { testDatabase?: TestDatabase }> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "clearbox-test-"));
  let database: TestDatabase | undefined = options.database;
  const ownsDatabase = backend === "postgres" && !database;
  if (ownsDatabase) database = await createTestDatabase();
  const config = loadConfig({
    NODE_ENV: "test",
    PORT: "0",
    PUBLIC_HOST: "127.0.0.1",
    ADMIN_PORT: "0",
    ADMIN_TOKEN,
    DATA_DIR: dataDir,
    LOG_LEVEL: "debug",
    JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    // Suites make hundreds of accounts; the default argon2id cost (64 MiB) only slows them down.
    PASSWORD_HASH_MEMORY_KIB: "1024",
    PASSWORD_HASH_TIME_COST: "1",
    // Every test client comes from 127.0.0.1, and suites log in hundreds of users: the per-address
    // budget is lifted (tests of the throttle set their own).
    LOGIN_ATTEMPTS_PER_ADDRESS: "1000000",
    REGISTRATIONS_PER_ADDRESS: "1000000",
    // Suites reconnect one device in loops (replacement, churn, faults): the connect budget is
    // lifted too (its own tests set it).
    WS_CONNECTS_PER_DEVICE: "1000000",
    ...(database ? { DATABASE_URL: database.url } : {}),
    ...options.env,
  });
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      logs.push(String(chunk));
      done();
    },
  });
  const logger = createLogger({
    level: config.logLevel,
    nodeId: config.nodeId,
    format: config.logFormat,
    destination,
  });
  let node: ClearBoxNode;
  try {
    node = await createNode(config, {
      logger,
      afterErasureStep: options.afterErasureStep,
      erasureRetryBaseMs: options.erasureRetryBaseMs,
      expandGroups: options.expandGroups,
    });
  } catch (error) {
    // A start that failed (e.g. PORT taken, retried by the caller) leaves no database or directory behind.
    if (ownsDatabase) await database?.drop().catch(() => {});
    if (!options.dataDir && !options.keepData) rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }
  return Object.assign(node, {
    logs,
    dataDir,
    testDatabase: database,
    async teardown() {
      // RabbitMQ outlives the test: delete the device queues this node's accounts may have made.
      if (node.offline.kind === "rabbitmq") {
        const { devices } = await import("../../src/db/schema.ts");
        const rows = await node.database.db.select().from(devices);
        await Promise.all(rows.map((d) => node.offline.purge(d.userId, d.deviceId).catch(() => 0)));
      }
      await node.stop();
      // Redis keys outlive the node too (last-seen times have no TTL): delete this run's prefix
      // (only a test prefix, never the default `cb:` of a server that may share this Redis).
      if (config.redisUrl && config.redisPrefix.startsWith("cbt")) {
        await deleteKeys(config.redisUrl, config.redisPrefix);
      }
      if (ownsDatabase) await database?.drop();
      if (!options.keepData) rmSync(dataDir, { recursive: true, force: true });
    },
  });
}

/**
 * Two nodes of one cluster on the services stack (PostgreSQL, Redis, RabbitMQ under a fresh run
 * prefix) sharing a fresh database, named `<name>-a` and `<name>-b`; resolves once each sees the
 * other in its ring (throws after 30 s: heartbeats cross Redis on a machine that may be loaded). `teardown` stops both and drops the database.
 */
export async function startTwoNodes(name: string): Promise<{
  a: TestNode;
  b: TestNode;
  teardown(): Promise<void>;
}> {
  const database = await createTestDatabase();
  const env = {
    ...stackEnv("services", runPrefix()),
    JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
  };
  const started: TestNode[] = [];
  // Both stop and the database goes even when one of them fails to: a node left running would
  // keep its timers and connections into the files that run after this one.
  const teardown = async () => {
    let failure: unknown;
    for (const node of started) {
      await node.teardown().catch((error: unknown) => {
        failure ??= error;
      });
    }
    await database.drop();
    if (failure !== undefined) throw failure;
  };
  try {
    started.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${name}-a` } }));
    started.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${name}-b` } }));
    const [a, b] = started as [TestNode, TestNode];
    const until = Date.now() + 30_000;
    while (a.actors.ringMembers().length < 2 || b.actors.ringMembers().length < 2) {
      if (Date.now() > until) throw new Error("the two nodes never saw each other");
      await Bun.sleep(50);
    }
    return { a, b, teardown };
  } catch (error) {
    await teardown().catch(() => undefined);
    throw error;
  }
}

/** The state of `userId`'s device socket on `node` (`pending`, `draining`, `live`…), as its gateway sees it. */
export function socketState(node: TestNode, userId: string, deviceId = 1): string | undefined {
  const registry = (node.gateway as unknown as { options: { registry: SocketRegistry } }).options.registry;
  return registry.get(userId, deviceId)?.state;
}

/**
 * Waits (15 s at most) until `userId` has no socket on `node` and no presence lease: a send to them
 * now goes to their offline queue. A client's close reaches the node when it does; a fixed pause
 * after it says nothing on a loaded machine.
 */
export async function offlineOn(node: TestNode, userId: string): Promise<void> {
  await waitUntil(
    async () => socketState(node, userId) === undefined && (await node.presence.sockets(userId)).length === 0,
    `${userId} to have no socket and no lease`,
  );
}
