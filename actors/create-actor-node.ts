import { ActorSystem, type ActorSystemOptions } from "./actor-system.ts";
import { AmqpTransport } from "./amqp-transport.ts";
import { InMemoryMembership } from "./in-memory-membership.ts";
import { InMemoryTransport } from "./in-memory-transport.ts";
import type { Membership } from "./membership.ts";
import { RedisMembership } from "./redis-membership.ts";
import type { Transport } from "./transport.ts";

/** Options for {@link createActorNode}: the system's options plus where the cluster services are. */
export interface ActorNodeOptions extends Omit<ActorSystemOptions, "membership" | "transport"> {
  /** Redis for the membership; unset → single node in memory. */
  redisUrl?: string;
  /** RabbitMQ for the node transport; required with `redisUrl`. */
  amqpUrl?: string;
  /** Prefix of Redis keys and RabbitMQ queues. Default `clearbox:cluster` / `clearbox`. */
  prefix?: string;
  heartbeatMs?: number;
  ttlMs?: number;
  prefetch?: number;
  /** How long start-up waits for RabbitMQ before `start` rejects (BrokerUnreachableError). Default 60 s. */
  startupWaitMs?: number;
  /** Overrides, e.g. an in-memory hub shared by several nodes in one test. */
  membership?: Membership;
  transport?: Transport;
}

/**
 * Builds one node. With `redisUrl` (and `amqpUrl`) it joins the cluster through Redis and talks to
 * peers over RabbitMQ; with neither it is the embedded single-node default. Call `start()` after
 * registering the actor kinds.
 */
export function createActorNode(options: ActorNodeOptions): ActorSystem {
  const { redisUrl, amqpUrl, prefix, heartbeatMs, ttlMs, prefetch, startupWaitMs, ...system } = options;
  if (redisUrl && !amqpUrl && !options.transport) {
    throw new Error("a clustered node (REDIS_URL set) needs AMQP_URL for the node-to-node transport");
  }
  const membership =
    options.membership ??
    (redisUrl
      ? new RedisMembership({
          nodeId: system.nodeId,
          redis: redisUrl,
          prefix: `${prefix ?? "clearbox"}:cluster`,
          heartbeatMs,
          ttlMs,
          logger: system.logger,
        })
      : new InMemoryMembership(system.nodeId));
  const transport =
    options.transport ??
    (redisUrl && amqpUrl
      ? new AmqpTransport({
          nodeId: system.nodeId,
          url: amqpUrl,
          prefix: prefix ?? "clearbox",
          prefetch,
          startupWaitMs,
          logger: system.logger,
        })
      : new InMemoryTransport(system.nodeId));
  return new ActorSystem({ ...system, membership, transport });
}
