import type Redis from "ioredis";
import {
  type ActorSystem,
  createActorNode,
  type DeviceSockets,
  groupActorFactory,
  type SocketRef,
  userActorFactory,
} from "../../actors/index.ts";
import type { Config } from "../config/index.ts";
import type { Db } from "../db/index.ts";
import { Gateway } from "../gateway/index.ts";
import type { GatewayCommand, NodeLink, SocketStatus } from "../gateway/node-link.ts";
import type { Logger } from "../observability/logger.ts";
import type { SessionService } from "../sessions/service.ts";
import { AmqpOfflineQueue } from "./amqp-offline-queue.ts";
import type { EnvelopeLog } from "./envelope-log.ts";
import { PostgresGroupDirectory } from "./group-directory.ts";
import { LogOfflineQueue } from "./log-offline-queue.ts";
import { MemoryPresence } from "./memory-presence.ts";
import { MongoEnvelopeLog } from "./mongo-envelope-log.ts";
import type { OfflineQueue } from "./offline-queue.ts";
import { PostgresEnvelopeLog } from "./postgres-envelope-log.ts";
import type { Presence } from "./presence.ts";
import { RedisPresence } from "./redis-presence.ts";
import { MessagingService, userKey } from "./service.ts";

/** The messaging half of a node: stores, actors, gateway. */
export interface Messaging {
  log: EnvelopeLog;
  offline: OfflineQueue;
  presence: Presence;
  actors: ActorSystem;
  service: MessagingService;
  gateway: Gateway;
  /** Closes a user's sockets (one device's, or all) wherever they are. */
  closeSockets(userId: string, deviceId: number | undefined, code: number, reason: string): Promise<void>;
  /** Backing services the node is ready only with. */
  readiness: { name: string; check(): Promise<void> }[];
  /** Closes sockets, hands actors off, then closes the stores. */
  stop(): Promise<void>;
  /** Crash simulation for tests: stops without handoff or flushing. */
  abort(): Promise<void>;
}

/** The pinned actor kind through which other nodes reach this node's gateway. */
const GATEWAY_KIND = "gateway";

/**
 * Builds the stores (MongoDB or PostgreSQL log, RabbitMQ or embedded queue, Redis or in-memory
 * presence), the actor node (clustered through Redis + RabbitMQ, or single), and the gateway.
 */
export async function createMessaging(deps: {
  config: Config;
  db: Db;
  redis?: Redis;
  sessions: SessionService;
  logger: Logger;
  /** Address shown in the cluster view (the public URL). */
  address?: string;
}): Promise<Messaging> {
  const { config, db, redis, logger } = deps;
  const prefix = config.redisPrefix.replace(/[:.]+$/, "") || "clearbox";
  const mongo = config.mongodbUrl
    ? await MongoEnvelopeLog.open(config.mongodbUrl, { retentionDays: config.retentionDays })
    : undefined;
  const log: EnvelopeLog = mongo ?? new PostgresEnvelopeLog(db);
  const offline: OfflineQueue = config.amqpUrl
    ? await AmqpOfflineQueue.open(config.amqpUrl, { prefix, retentionDays: config.retentionDays })
    : new LogOfflineQueue(log);
  const leaseMs = config.presenceLeaseSeconds * 1000;
  const presence: Presence = redis
    ? new RedisPresence(redis, config.redisPrefix, leaseMs)
    : new MemoryPresence(leaseMs);

  let gateway: Gateway | undefined;
  const actors = createActorNode({
    nodeId: config.nodeId,
    address: deps.address,
    redisUrl: redis ? config.redisUrl : undefined,
    amqpUrl: config.amqpUrl,
    prefix,
    heartbeatMs: config.clusterHeartbeatMs,
    ttlMs: config.clusterHeartbeatMs * 3,
    connections: () => gateway?.connections ?? 0,
    logger,
  });
  const link: NodeLink = {
    async send(nodeId: string, command: GatewayCommand) {
      if (nodeId === config.nodeId) return gateway?.handle(command) === true;
      // A tell, not an ask: the transport is durable, and a socket found missing there is reported
      // back to its user actor as a disconnect. A slow node then delays delivery instead of failing it.
      return actors.tell(`${GATEWAY_KIND}:${nodeId}`, command).then(
        () => true,
        () => false,
      );
    },
  };
  const closeSockets = async (userId: string, deviceId: number | undefined, code: number, reason: string) => {
    const nodes = new Set([config.nodeId, ...(await presence.sockets(userId)).map((s) => s.nodeId)]);
    await Promise.all(
      [...nodes].map((nodeId) =>
        link.send(nodeId, { type: "close", userId, deviceId, code, reason }).catch(() => false),
      ),
    );
  };
  const sockets: DeviceSockets = {
    push: (socket: SocketRef, userId, envelopes) =>
      link.send(socket.nodeId, {
        type: "push",
        userId,
        deviceId: socket.deviceId,
        connectionId: socket.connectionId,
        envelopes: [...envelopes],
      }),
    async status(socket, userId) {
      if (socket.nodeId === config.nodeId) {
        return gateway?.status(userId, socket.deviceId, socket.connectionId) ?? "gone";
      }
      const command = {
        type: "status" as const,
        userId,
        deviceId: socket.deviceId,
        connectionId: socket.connectionId,
      };
      return actors
        .ask<SocketStatus>(`${GATEWAY_KIND}:${socket.nodeId}`, command, { timeoutMs: 3000 })
        .catch(() => "gone" as const);
    },
    closeAll: (userId, code, reason) => closeSockets(userId, undefined, code, reason),
    open: async (userId) =>
      (await presence.sockets(userId)).map(({ deviceId, nodeId, connectionId }) => ({
        deviceId,
        nodeId,
        connectionId,
      })),
  };
  actors
    .register(
      "user",
      userActorFactory({
        log,
        offline,
        sockets,
        clock: { now: Date.now },
        recoveryMs: config.clusterHeartbeatMs * 9,
      }),
    )
    .register(
      "group",
      groupActorFactory({ directory: new PostgresGroupDirectory(db), log, clock: { now: Date.now } }),
    )
    .registerPinned(GATEWAY_KIND, () => ({
      receive: (command: GatewayCommand) => gateway?.handle(command) ?? false,
    }));

  const service = new MessagingService(db, log, actors);
  gateway = new Gateway({
    nodeId: config.nodeId,
    sessions: deps.sessions,
    messaging: service,
    offline,
    presence,
    logger,
    link: () => link,
    rateLimit: { perSecond: config.deviceRateLimit, burst: config.deviceRateLimit * 2 },
    presenceLeaseMs: leaseMs,
  });
  await actors.start();

  const readiness = [
    ...(config.amqpUrl ? [{ name: "rabbitmq", check: () => offline.ping() }] : []),
    ...(mongo ? [{ name: "mongodb", check: () => mongo.ping() }] : []),
  ];

  const closeStores = async () => {
    await presence.close();
    await offline.close();
    await log.close();
  };
  return {
    log,
    offline,
    presence,
    actors,
    service,
    gateway,
    readiness,
    closeSockets,
    async stop() {
      await gateway?.stop();
      await actors.stop();
      await closeStores();
    },
    async abort() {
      await actors.abort();
      await closeStores();
    },
  };
}

export { userKey };
