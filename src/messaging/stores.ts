import { join } from "node:path";
import type Redis from "ioredis";
import type { Config } from "../config/index.ts";
import type { Db } from "../db/index.ts";
import type { Logger } from "../observability/logger.ts";
import { adoptPgliteLog } from "./adopt-pglite-log.ts";
import { AmqpOfflineQueue } from "./amqp-offline-queue.ts";
import type { EnvelopeLog } from "./envelope-log.ts";
import type { CommitListener } from "./group-commit.ts";
import { LogOfflineQueue } from "./log-offline-queue.ts";
import { MemoryPresence } from "./memory-presence.ts";
import type { OfflineQueue } from "./offline-queue.ts";
import { PostgresEnvelopeLog } from "./postgres-envelope-log.ts";
import type { Presence } from "./presence.ts";
import { RedisPresence } from "./redis-presence.ts";
import { SqliteEnvelopeLog } from "./sqlite-envelope-log.ts";

/** The messaging stores of one node, chosen by configuration. */
export interface MessagingStores {
  log: EnvelopeLog;
  offline: OfflineQueue;
  presence: Presence;
  /** Backing services the node is ready only with (RabbitMQ, MongoDB), beside the database and Redis. */
  readiness: { name: string; check(): Promise<void> }[];
  /** Closes presence, the offline queue and the log, in that order. */
  close(): Promise<void>;
}

/**
 * Opens the embedded default's envelope log: SQLite in `embeddedDir/envelopes.db`, or in a
 * temporary directory for `null`. It shares nothing with PGlite until {@link openMessagingStores}
 * adopts an older PGlite log into it, so createNode starts it while PGlite opens: its writer
 * thread loads and migrates on its own thread meanwhile.
 */
export function openEmbeddedLog(
  embeddedDir: string | null,
  onCommit?: CommitListener,
  expandGroupsInBackground = true,
): Promise<SqliteEnvelopeLog> {
  return SqliteEnvelopeLog.open(embeddedDir === null ? null : join(embeddedDir, "envelopes.db"), onCommit, {
    expandInBackground: expandGroupsInBackground,
  });
}

/**
 * Opens the envelope log (MongoDB when `MONGODB_URL` is set; else the node's PostgreSQL, or on the
 * embedded default SQLite in `DATA_DIR/envelopes.db`), the offline queue (RabbitMQ when `AMQP_URL`
 * is set, else the log itself) and presence (Redis when the node has a Redis connection, else in
 * memory). `embeddedDir` is where the embedded log lives: a directory, or `null` for a temporary
 * one (tests that keep PGlite in memory).
 */
export async function openMessagingStores(
  config: Config,
  database: { db: Db; kind: "postgres" | "pglite" },
  redis?: Redis,
  embeddedDir: string | null = config.dataDir,
  /** Hears each group-committed write of the log (metrics). */
  onCommit?: CommitListener,
  logger?: Logger,
  /** False: group messages are expanded only when something needs their rows (tests; see NodeOptions). */
  expandGroupsInBackground = true,
  /** The embedded log, already opening ({@link openEmbeddedLog}); default opens it here. */
  embeddedLog?: Promise<SqliteEnvelopeLog>,
): Promise<MessagingStores> {
  const prefix = clusterPrefix(config);
  // Imported only when configured: the MongoDB driver is the heaviest module of the server's graph.
  const mongo = config.mongodbUrl
    ? await (await import("./mongo-envelope-log.ts")).MongoEnvelopeLog.open(config.mongodbUrl, {
        retentionDays: config.retentionDays,
        onCommit,
      })
    : undefined;
  let log: EnvelopeLog;
  if (mongo) log = mongo;
  else if (database.kind === "pglite") {
    log = await (embeddedLog ?? openEmbeddedLog(embeddedDir, onCommit, expandGroupsInBackground));
  } else
    log = new PostgresEnvelopeLog(database.db, onCommit, { expandInBackground: expandGroupsInBackground });
  let offline: OfflineQueue;
  try {
    // A data directory from before the log moved to SQLite: bring its undelivered envelopes along.
    if (database.kind === "pglite" && !mongo) await adoptPgliteLog(database.db, log);
    offline = config.amqpUrl
      ? await AmqpOfflineQueue.open(config.amqpUrl, {
          prefix,
          retentionDays: config.retentionDays,
          startupWaitMs: config.startupWaitMs,
          logger,
        })
      : new LogOfflineQueue(log);
  } catch (error) {
    // Opened but not handed to anyone: close the log (its writer thread, MongoDB's connection) here.
    await log.close().catch(() => undefined);
    throw error;
  }
  const leaseMs = config.presenceLeaseSeconds * 1000;
  const presence: Presence = redis
    ? new RedisPresence(redis, config.redisPrefix, leaseMs)
    : new MemoryPresence(leaseMs);
  return {
    log,
    offline,
    presence,
    readiness: [
      ...(config.amqpUrl ? [{ name: "rabbitmq", check: () => offline.ping() }] : []),
      ...(mongo ? [{ name: "mongodb", check: () => mongo.ping() }] : []),
    ],
    async close() {
      await presence.close();
      await offline.close();
      await log.close();
    },
  };
}

/** The prefix of this node's RabbitMQ queues and cluster keys, from `REDIS_PREFIX` without its trailing separator. */
export function clusterPrefix(config: Config): string {
  return config.redisPrefix.replace(/[:.]+$/, "") || "clearbox";
}
