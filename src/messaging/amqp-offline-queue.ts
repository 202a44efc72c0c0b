import pLimit from "p-limit";
import type { Channel, Connection, Publisher, ReturnedMessage, SyncMessage } from "rabbitmq-client";
import {
  amqpCode,
  closeQuietly,
  envelopeKey,
  type Logger,
  openAmqpConnection,
  silentLogger,
  withChannel,
} from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { DeviceRef, OfflineQueue, QueueDrain } from "./offline-queue.ts";

function encode(envelope: StoredEnvelope): Buffer {
  return Buffer.from(JSON.stringify(envelope));
}

/** rabbitmq-client parses `application/json` bodies itself; older or foreign ones arrive as bytes. */
function decode(body: unknown): StoredEnvelope {
  if (Buffer.isBuffer(body)) return JSON.parse(body.toString()) as StoredEnvelope;
  if (typeof body === "string") return JSON.parse(body) as StoredEnvelope;
  return body as StoredEnvelope;
}

/** How long a drain waits for a channel before trying again a drain connection the broker did not take. */
const CONNECT_RETRY_MS = 1_000;

/** Dedicated connections for drain channels at most; each carries up to CHANNELS_PER_CONNECTION. */
const MAX_DRAIN_CONNECTIONS = 8;

/**
 * Drain channels per connection: RabbitMQ's default `channel_max` (2047) less a few for the
 * connection's own use. A broker configured lower refuses the extra channels (the drain fails and
 * the device reconnects).
 */
const CHANNELS_PER_CONNECTION = 2047 - 8;

/**
 * Publish attempts per offline envelope: one whose confirm was outstanding when the connection died
 * is published again on the next channel (each attempt waits up to 5 s for the broker). A flush that
 * still fails leaves the envelopes pending in the log and the actor (delivered when the device connects).
 */
const FLUSH_ATTEMPTS = 3;

/**
 * Channels open at once on the node's main connection for one-off operations (declare, remove,
 * purge, depth, drop): each opens a channel of its own, because a refusal (404, 406) closes it.
 * rabbitmq-client throws past the connection's `channel_max` (RabbitMQ's default 2047), which a burst
 * of first flushes or removals for thousands of devices reached; past this bound they wait instead.
 */
const ONE_OFF_CHANNELS = 64;

interface DrainConnection {
  rabbit: Connection;
  limit: number;
  inUse: number;
}

interface OpenOptions {
  url: string;
  /** How long connecting waits for the broker (start-up: the node's wait; drain connections: 5 s). */
  startupWaitMs: number;
  logger: Logger;
}

/**
 * Channels for drains. Unacked messages belong to the channel that took them, so a device with a
 * backlog out holds one; RabbitMQ allows channel_max (2047 by default) per connection. The pool
 * spreads channels over up to MAX_DRAIN_CONNECTIONS connections and, when all are full, makes
 * further drains wait for a channel instead of failing. Each connection reconnects by itself; a
 * channel that died with it fails its drain (what it had taken goes back to the queue).
 */
class DrainChannels {
  private readonly connections: DrainConnection[] = [];
  private connecting: Promise<DrainConnection> | undefined;
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(private readonly options: OpenOptions) {}

  get connectionCount(): number {
    return this.connections.length;
  }

  get inUse(): number {
    return this.connections.reduce((n, c) => n + c.inUse, 0);
  }

  async acquire(): Promise<{ channel: Channel; release: () => Promise<void> }> {
    for (;;) {
      if (this.closed) throw new Error("offline queue is closed");
      let connection = this.connections.find((c) => c.inUse < c.limit);
      let refused = false;
      if (!connection && this.connections.length < MAX_DRAIN_CONNECTIONS) {
        try {
          connection = await this.connect();
        } catch (error) {
          // A busy broker that does not take one more connection in time: the drain waits for a
          // channel of the connections open, trying the new one again now and then, instead of
          // failing its socket (a ramp of 15,000 connects at load 15 closed 4,645 sockets so).
          if (this.connections.length === 0) throw error;
          refused = true;
        }
      }
      if (!connection || connection.inUse >= connection.limit) {
        // Filled by the drains that awaited the same connect: open another while allowed. Waiting
        // here for a channel to be given back stalled every drain past the first connection's
        // channel_max in a burst (2,100 drains at once on a fresh node) until some device acked.
        if (connection && this.connections.length < MAX_DRAIN_CONNECTIONS) continue;
        await this.waitForChannel(refused ? CONNECT_RETRY_MS : undefined);
        continue;
      }
      connection.inUse++;
      let channel: Channel;
      try {
        // Waits for a reconnect for at most the connection's acquire timeout (5 s).
        channel = await connection.rabbit.acquire();
      } catch (error) {
        connection.inUse--;
        this.waiting.shift()?.();
        throw error;
      }
      let released = false;
      return {
        channel,
        release: async () => {
          if (released) return;
          released = true;
          // Closing returns every unacked message to its queue in its original position.
          await channel.close().catch(() => {});
          connection.inUse--;
          this.waiting.shift()?.();
        },
      };
    }
  }

  /** Until a channel is given back, or `timeoutMs` (then the caller looks again). */
  private waitForChannel(timeoutMs?: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          // Out of the list, so a channel given back later wakes a drain still waiting.
          const at = this.waiting.indexOf(wake);
          if (at >= 0) this.waiting.splice(at, 1);
          resolve();
        }, timeoutMs);
      }
      this.waiting.push(wake);
    });
  }

  private connect(): Promise<DrainConnection> {
    this.connecting ??= (async () => {
      try {
        const rabbit = await openAmqpConnection({
          ...this.options,
          name: `offline-queue drains ${this.connections.length + 1}`,
          startupWaitMs: 5_000,
        });
        // Closed while it connected: close() did not see it, so it goes here (it would reconnect
        // for ever after the node stopped).
        if (this.closed) {
          await closeQuietly(rabbit);
          throw new Error("offline queue is closed");
        }
        const entry = { rabbit, limit: CHANNELS_PER_CONNECTION, inUse: 0 };
        this.connections.push(entry);
        for (const wake of this.waiting.splice(0)) wake();
        return entry;
      } finally {
        this.connecting = undefined;
      }
    })();
    return this.connecting;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const wake of this.waiting.splice(0)) wake();
    // A connection being opened now closes itself when it is up (connect); wait for that.
    await this.connecting?.catch(() => undefined);
    for (const c of this.connections) await closeQuietly(c.rabbit);
  }
}

/**
 * Offline queues in RabbitMQ: one durable classic queue per device with a backlog, persistent
 * messages, publisher confirms. Retention is the queue's `x-message-ttl`, and a queue unused for the
 * retention period expires (`x-expires`). A drain takes messages with basic.get and acks each only
 * after the device did.
 *
 * A queue is declared by the first flush to it and removed (`remove`, `if-empty`) by the device's
 * user actor once the device drained and acked it all. Flushes publish `mandatory`: a message for a
 * queue removed since this node declared it comes back (basic.return, before its confirm), and the
 * flush declares the queue again and re-publishes, so a stale record of a declared queue never
 * loses a message.
 *
 * A drain holds a channel (DrainChannels) only while it has messages out: an empty queue, the
 * common reconnect, opens one, reads nothing and gives it back.
 *
 * Connections heal themselves (rabbitmq-client; see actors/amqp-connect.ts). While the broker is
 * away, operations wait up to 5 s for it and then reject; `ping` rejects at once (readiness).
 */
export class AmqpOfflineQueue implements OfflineQueue {
  readonly kind = "rabbitmq";
  private readonly declared = new Set<string>();
  /** Bounds the one-off channels open at once (ONE_OFF_CHANNELS). */
  private readonly oneOff = pLimit(ONE_OFF_CHANNELS);
  private readonly drains: DrainChannels;
  private readonly publisher: Publisher;
  /** Queue name → the message-id sets (`envelopeKey`s) of flushes in progress, filled by basic.return. */
  private readonly returned = new Map<string, Set<string>[]>();

  private constructor(
    private readonly rabbit: Connection,
    options: OpenOptions,
    private readonly prefix: string,
    private readonly retentionMs: number,
  ) {
    this.drains = new DrainChannels(options);
    this.publisher = rabbit.createPublisher({ confirm: true, maxAttempts: FLUSH_ATTEMPTS });
    // A broker that lost its state (a new node, a wiped volume) lost the queues too: declare again.
    rabbit.on("connection", () => this.declared.clear());
    // The broker sends basic.return before the confirm of an unroutable mandatory message.
    this.publisher.on("basic.return", (message: ReturnedMessage) => {
      const id = message.messageId;
      if (id === undefined) return;
      for (const ids of this.returned.get(message.routingKey) ?? []) ids.add(id);
    });
  }

  /**
   * Connects, waiting up to `startupWaitMs` (default 60 s) for the broker (BrokerUnreachableError
   * after); `prefix` names the queues (`<prefix>.dev.<user>.<device>`), tests pass a random one.
   */
  static async open(
    url: string,
    options: { prefix: string; retentionDays: number; startupWaitMs?: number; logger?: Logger },
  ): Promise<AmqpOfflineQueue> {
    const open: OpenOptions = {
      url,
      startupWaitMs: options.startupWaitMs ?? 60_000,
      logger: options.logger ?? silentLogger,
    };
    const rabbit = await openAmqpConnection({ ...open, name: "offline-queue" });
    return new AmqpOfflineQueue(rabbit, open, options.prefix, options.retentionDays * 86_400_000);
  }

  /** Connections open for drain channels. */
  get connectionCount(): number {
    return this.drains.connectionCount;
  }

  /** Drain channels open now (devices with taken, unacked messages). */
  get channelsInUse(): number {
    return this.drains.inUse;
  }

  /** Runs `use` on a channel of its own from the main connection, at most ONE_OFF_CHANNELS at once. */
  private channel<T>(use: (channel: Channel) => Promise<T>): Promise<T> {
    return this.oneOff(() => withChannel(this.rabbit, use));
  }

  /** The queue that holds a device's offline envelopes. */
  queueName(userId: string, deviceId: number): string {
    return `${this.prefix}.dev.${userId}.${deviceId}`;
  }

  private async declare(name: string): Promise<void> {
    if (this.declared.has(name)) return;
    await this.channel((channel) =>
      channel.queueDeclare({
        queue: name,
        durable: true,
        arguments: {
          "x-queue-type": "classic",
          "x-message-ttl": this.retentionMs,
          "x-expires": this.retentionMs,
        },
      }),
    );
    this.declared.add(name);
  }

  /**
   * Publishes to the device's queue, declaring it first unless this node already did; messages that
   * come back unroutable (the queue was removed meanwhile) are published again after a fresh
   * declare. Resolves once the broker confirmed all of them; throws if they keep coming back.
   */
  async flush(userId: string, deviceId: number, envelopes: readonly StoredEnvelope[]): Promise<void> {
    const name = this.queueName(userId, deviceId);
    let left = envelopes;
    for (let attempt = 1; left.length > 0; attempt++) {
      if (attempt > FLUSH_ATTEMPTS) throw new Error("offline queue keeps disappearing under its flush");
      await this.declare(name);
      const ids = new Set<string>();
      const watching = this.returned.get(name) ?? [];
      watching.push(ids);
      this.returned.set(name, watching);
      try {
        // Published in order on one channel; resolves once the broker confirmed every one.
        await Promise.all(
          left.map((envelope) =>
            this.publisher.send(
              {
                routingKey: name,
                durable: true,
                mandatory: true,
                // The envelope's key, not its id alone: another sender's envelope may have the same id.
                messageId: envelopeKey(envelope),
                contentType: "application/json",
              },
              encode(envelope),
            ),
          ),
        );
        // rabbitmq-client emits basic.return on the next turn (setImmediate); the return came
        // before its confirm on the wire, so one turn later every return of these is in `ids`.
        await new Promise((resolve) => setImmediate(resolve));
      } finally {
        watching.splice(watching.indexOf(ids), 1);
        if (watching.length === 0) this.returned.delete(name);
      }
      if (ids.size > 0) this.declared.delete(name);
      left = left.filter((e) => ids.has(envelopeKey(e)));
    }
  }

  async drain(userId: string, deviceId: number): Promise<QueueDrain> {
    const name = this.queueName(userId, deviceId);
    // envelopeKey → the deliveries of that envelope this drain holds (a flush repeated after a
    // failure may have queued it twice).
    const taken = new Map<string, SyncMessage[]>();
    let channel: Channel | undefined;
    let giveBack: (() => Promise<void>) | undefined;
    /** The queue answered empty (or does not exist): nothing more to take. */
    let exhausted = false;
    /** A basic.get found the queue (404 otherwise: there is none to remove). */
    let existed = false;
    let open = true;
    const closeChannel = async () => {
      const release = giveBack;
      channel = undefined;
      giveBack = undefined;
      await release?.();
    };
    return {
      next: async (max) => {
        const out: StoredEnvelope[] = [];
        if (!open || exhausted) return out;
        if (!channel) {
          const fresh = await this.drains.acquire();
          if (!open) {
            await fresh.release();
            return out;
          }
          channel = fresh.channel;
          giveBack = fresh.release;
        }
        const current = channel;
        while (open && out.length < max) {
          let message: SyncMessage | undefined;
          try {
            message = await current.basicGet({ queue: name, noAck: false });
          } catch (error) {
            if (!open) return []; // released meanwhile: what was taken went back to the queue
            // A queue that was never declared answers 404 (and closes the channel): it is empty.
            if (amqpCode(error) !== "NOT_FOUND") throw error;
            existed = false;
            exhausted = true;
            break;
          }
          existed = true;
          if (message === undefined) {
            exhausted = true;
            break;
          }
          const envelope = decode(message.body);
          const key = envelopeKey(envelope);
          const held = taken.get(key);
          if (held) held.push(message);
          else taken.set(key, [message]);
          out.push(envelope);
        }
        if (exhausted && taken.size === 0) await closeChannel();
        return out;
      },
      ack: async (refs) => {
        const current = channel;
        if (!current) return;
        for (const ref of refs) {
          const key = envelopeKey(ref);
          for (const message of taken.get(key) ?? []) {
            // A channel that died with its connection already returned these to the queue.
            if (current.active) current.basicAck({ deliveryTag: message.deliveryTag });
          }
          taken.delete(key);
        }
        if (exhausted && taken.size === 0) await closeChannel();
      },
      dropFrom: async (senderUser) => {
        const current = channel;
        if (!current) return 0;
        let dropped = 0;
        for (const [key, messages] of taken) {
          const from = decode(messages[0].body).senderUser;
          if (from !== senderUser) continue;
          for (const message of messages) {
            // A channel that died with its connection already returned these to the queue.
            if (current.active) current.basicAck({ deliveryTag: message.deliveryTag });
          }
          taken.delete(key);
          dropped += messages.length;
        }
        if (exhausted && taken.size === 0) await closeChannel();
        return dropped;
      },
      rewind: () => {
        // Messages another channel gave back are ready again; those this channel holds are not.
        exhausted = false;
      },
      release: async () => {
        if (!open) return 0;
        open = false;
        let requeued = 0;
        for (const messages of taken.values()) requeued += messages.length;
        // Closing the channel returns the unacked messages; RabbitMQ has requeued them (notify_down,
        // a synchronous call from the channel to the queue) by the time close-ok arrives.
        await closeChannel();
        return requeued;
      },
      get emptied() {
        return existed && exhausted && taken.size === 0;
      },
    };
  }

  /** Messages waiting in the device's queue; 0 when it has none (the queue is not created to count it). */
  async depth(userId: string, deviceId: number): Promise<number> {
    try {
      const queue = this.queueName(userId, deviceId);
      return (await this.channel((channel) => channel.queueDeclare({ queue, passive: true }))).messageCount;
    } catch (error) {
      if (amqpCode(error) === "NOT_FOUND") return 0;
      throw error;
    }
  }

  async remove(userId: string, deviceId: number): Promise<boolean> {
    const name = this.queueName(userId, deviceId);
    try {
      // Deleting a queue that does not exist is a no-op for RabbitMQ (delete-ok, 0 messages); one
      // holding ready messages refuses with 406 PRECONDITION_FAILED (on a channel of its own).
      await this.channel((channel) => channel.queueDelete({ queue: name, ifEmpty: true }));
      this.declared.delete(name);
      return true;
    } catch (error) {
      if (amqpCode(error) === "PRECONDITION_FAILED") return false;
      throw error;
    }
  }

  /**
   * Passive-declares each device's queue on one channel (a 404 closes it; the next device gets a
   * fresh one) and returns those that exist with no ready message.
   */
  async idleQueues(devices: readonly DeviceRef[]): Promise<DeviceRef[]> {
    const idle: DeviceRef[] = [];
    let channel: Channel | undefined;
    try {
      for (const device of devices) {
        channel ??= await this.rabbit.acquire();
        try {
          const queue = this.queueName(device.userId, device.deviceId);
          const { messageCount } = await channel.queueDeclare({ queue, passive: true });
          if (messageCount === 0) idle.push(device);
        } catch (error) {
          if (amqpCode(error) !== "NOT_FOUND") throw error;
          channel = undefined; // closed by the broker
        }
      }
    } finally {
      await channel?.close().catch(() => {});
    }
    return idle;
  }

  async purge(userId: string, deviceId: number): Promise<number> {
    const name = this.queueName(userId, deviceId);
    const { messageCount } = await this.channel((channel) => channel.queueDelete({ queue: name }));
    this.declared.delete(name);
    return messageCount;
  }

  async dropFrom(userId: string, deviceId: number, senderUser: string): Promise<number> {
    const name = this.queueName(userId, deviceId);
    const channel = await this.rabbit.acquire();
    try {
      await channel.confirmSelect();
      const { messageCount } = await channel.queueDeclare({ queue: name, passive: true });
      const taken: SyncMessage[] = [];
      const kept: Promise<void>[] = [];
      let dropped = 0;
      // One pass over what is there now: keep others' messages by re-publishing them behind, in order.
      for (let i = 0; i < messageCount; i++) {
        const message = await channel.basicGet({ queue: name, noAck: false });
        if (message === undefined) break;
        taken.push(message);
        const envelope = decode(message.body);
        if (envelope.senderUser === senderUser) dropped++;
        else {
          const publish = channel.basicPublish(
            {
              routingKey: name,
              durable: true,
              messageId: message.messageId,
              contentType: "application/json",
            },
            encode(envelope),
          );
          // Observed at once: should the pass fail before `Promise.all(kept)` (a basic.get refused,
          // a body that does not decode), closing the channel rejects the unconfirmed ones, and
          // nobody would be listening. The pass's own error is what the caller hears.
          publish.catch(() => undefined);
          kept.push(publish);
        }
      }
      // Only once the kept copies are confirmed do the originals go.
      await Promise.all(kept);
      for (const message of taken) channel.basicAck({ deliveryTag: message.deliveryTag });
      return dropped;
    } catch (error) {
      if (amqpCode(error) === "NOT_FOUND") return 0;
      throw error;
    } finally {
      await channel.close().catch(() => {});
    }
  }

  /** Rejects at once while the connection to the broker is down (readiness), else opens and closes a channel. */
  async ping(): Promise<void> {
    if (!this.rabbit.ready) throw new Error("rabbitmq connection is down");
    const channel = await this.rabbit.acquire();
    await channel.close();
  }

  async close(): Promise<void> {
    await this.publisher.close().catch(() => {});
    await this.drains.close();
    await closeQuietly(this.rabbit);
  }
}
