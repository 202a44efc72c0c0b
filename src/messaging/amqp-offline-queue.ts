import type { Channel, ChannelModel, ConfirmChannel, GetMessage } from "amqplib";
import { connect } from "amqplib";
import type { StoredEnvelope } from "./envelope.ts";
import type { OfflineQueue, QueueDrain } from "./offline-queue.ts";

function encode(envelope: StoredEnvelope): Buffer {
  return Buffer.from(JSON.stringify(envelope));
}

function decode(content: Buffer): StoredEnvelope {
  return JSON.parse(content.toString()) as StoredEnvelope;
}

/** Dedicated connections for drain channels at most; each carries up to the broker's channel_max. */
const MAX_DRAIN_CONNECTIONS = 8;

interface DrainConnection {
  model: ChannelModel;
  limit: number;
  inUse: number;
}

/**
 * Channels for drains. Unacked messages belong to the channel that took them, so a device with a
 * backlog out holds one; RabbitMQ allows channel_max (2047 by default) per connection. The pool
 * spreads channels over up to MAX_DRAIN_CONNECTIONS connections and, when all are full, makes
 * further drains wait for a channel instead of failing.
 */
class DrainChannels {
  private readonly connections: DrainConnection[] = [];
  private connecting: Promise<DrainConnection> | undefined;
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(private readonly url: string) {}

  get connectionCount(): number {
    return this.connections.length;
  }

  get inUse(): number {
    return this.connections.reduce((n, c) => n + c.inUse, 0);
  }

  async acquire(): Promise<{ channel: Channel; release: () => Promise<void> }> {
    for (;;) {
      if (this.closed) throw new Error("offline queue is closed");
      const free = this.connections.find((c) => c.inUse < c.limit);
      const connection =
        free ?? (this.connections.length < MAX_DRAIN_CONNECTIONS ? await this.connect() : undefined);
      if (!connection || connection.inUse >= connection.limit) {
        await new Promise<void>((wake) => this.waiting.push(wake));
        continue;
      }
      connection.inUse++;
      let channel: Channel;
      try {
        channel = await connection.model.createChannel();
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

  private connect(): Promise<DrainConnection> {
    this.connecting ??= (async () => {
      try {
        const model = await connect(this.url);
        const channelMax = (model as unknown as { connection: { channelMax: number } }).connection.channelMax;
        const entry = { model, limit: Math.max(1, Math.min(channelMax, 65_535) - 8), inUse: 0 };
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
    for (const c of this.connections) await c.model.close().catch(() => {});
  }
}

/**
 * Offline queues in RabbitMQ: one durable classic queue per device, persistent messages, publisher
 * confirms. Retention is the queue's `x-message-ttl`, and a queue unused for the retention period
 * expires (`x-expires`). A drain takes messages with basic.get and acks each only after the device did.
 *
 * A drain holds a channel (DrainChannels) only while it has messages out: an empty queue, the
 * common reconnect, opens one, reads nothing and gives it back.
 */
export class AmqpOfflineQueue implements OfflineQueue {
  readonly kind = "rabbitmq";
  private readonly declared = new Set<string>();
  private readonly drains: DrainChannels;

  private constructor(
    url: string,
    private readonly connection: ChannelModel,
    private readonly publisher: ConfirmChannel,
    private readonly prefix: string,
    private readonly retentionMs: number,
  ) {
    this.drains = new DrainChannels(url);
  }

  /** Connects; `prefix` names the queues (`<prefix>.dev.<user>.<device>`), tests pass a random one. */
  static async open(
    url: string,
    options: { prefix: string; retentionDays: number },
  ): Promise<AmqpOfflineQueue> {
    const connection = await connect(url);
    const publisher = await connection.createConfirmChannel();
    return new AmqpOfflineQueue(
      url,
      connection,
      publisher,
      options.prefix,
      options.retentionDays * 86_400_000,
    );
  }

  /** Connections open for drain channels. */
  get connectionCount(): number {
    return this.drains.connectionCount;
  }

  /** Drain channels open now (devices with taken, unacked messages). */
  get channelsInUse(): number {
    return this.drains.inUse;
  }

  /** The queue that holds a device's offline envelopes. */
  queueName(userId: string, deviceId: number): string {
    return `${this.prefix}.dev.${userId}.${deviceId}`;
  }

  private async declare(channel: Channel, name: string): Promise<void> {
    if (this.declared.has(name)) return;
    await channel.assertQueue(name, {
      durable: true,
      arguments: {
        "x-queue-type": "classic",
        "x-message-ttl": this.retentionMs,
        "x-expires": this.retentionMs,
      },
    });
    this.declared.add(name);
  }

  async flush(userId: string, deviceId: number, envelopes: readonly StoredEnvelope[]): Promise<void> {
    if (envelopes.length === 0) return;
    const name = this.queueName(userId, deviceId);
    await this.declare(this.publisher, name);
    for (const envelope of envelopes) {
      this.publisher.sendToQueue(name, encode(envelope), {
        persistent: true,
        messageId: envelope.id,
        contentType: "application/json",
      });
    }
    await this.publisher.waitForConfirms();
  }

  async drain(userId: string, deviceId: number): Promise<QueueDrain> {
    const name = this.queueName(userId, deviceId);
    const taken = new Map<string, GetMessage[]>();
    let channel: Channel | undefined;
    let giveBack: (() => Promise<void>) | undefined;
    /** The queue answered empty (or does not exist): nothing more to take. */
    let exhausted = false;
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
          // A queue that was never declared answers 404 and closes the channel: it is empty.
          fresh.channel.on("error", () => {});
          if (!open) {
            await fresh.release();
            return out;
          }
          channel = fresh.channel;
          giveBack = fresh.release;
        }
        const current = channel;
        while (open && out.length < max) {
          let message: GetMessage | false;
          try {
            message = await current.get(name, { noAck: false });
          } catch (error) {
            if (!open) return []; // released meanwhile: what was taken went back to the queue
            if ((error as { code?: unknown }).code !== 404) throw error;
            message = false;
          }
          if (message === false) {
            exhausted = true;
            break;
          }
          const envelope = decode(message.content);
          const held = taken.get(envelope.id);
          if (held) held.push(message);
          else taken.set(envelope.id, [message]);
          out.push(envelope);
        }
        if (exhausted && taken.size === 0) await closeChannel();
        return out;
      },
      ack: async (ids) => {
        const current = channel;
        if (!current) return;
        for (const id of ids) {
          for (const message of taken.get(id) ?? []) current.ack(message);
          taken.delete(id);
        }
        if (exhausted && taken.size === 0) await closeChannel();
      },
      release: async () => {
        if (!open) return;
        open = false;
        await closeChannel();
      },
    };
  }

  /** Messages waiting in the device's queue; 0 when it has none (the queue is not created to count it). */
  async depth(userId: string, deviceId: number): Promise<number> {
    const channel = await this.connection.createChannel();
    // A queue that does not exist answers 404 and closes the channel.
    channel.on("error", () => {});
    try {
      return (await channel.checkQueue(this.queueName(userId, deviceId))).messageCount;
    } catch (error) {
      if ((error as { code?: unknown }).code === 404) return 0;
      throw error;
    } finally {
      await channel.close().catch(() => {});
    }
  }

  async purge(userId: string, deviceId: number): Promise<number> {
    const name = this.queueName(userId, deviceId);
    const channel = await this.connection.createChannel();
    try {
      const { messageCount } = await channel.deleteQueue(name);
      this.declared.delete(name);
      return messageCount;
    } finally {
      await channel.close().catch(() => {});
    }
  }

  async dropFrom(userId: string, deviceId: number, senderUser: string): Promise<number> {
    const name = this.queueName(userId, deviceId);
    const channel = await this.connection.createConfirmChannel();
    // A queue that does not exist closes the channel with 404: nothing to drop.
    channel.on("error", () => {});
    try {
      const { messageCount } = await channel.checkQueue(name);
      const taken: GetMessage[] = [];
      let dropped = 0;
      // One pass over what is there now: keep others' messages by re-publishing them behind, in order.
      for (let i = 0; i < messageCount; i++) {
        const message = await channel.get(name, { noAck: false });
        if (message === false) break;
        taken.push(message);
        if (decode(message.content).senderUser === senderUser) dropped++;
        else channel.sendToQueue(name, message.content, { ...message.properties, persistent: true });
      }
      // Only once the kept copies are confirmed do the originals go.
      await channel.waitForConfirms();
      for (const message of taken) channel.ack(message);
      await channel.close();
      return dropped;
    } catch (error) {
      await channel.close().catch(() => {});
      if ((error as { code?: unknown }).code === 404) return 0;
      throw error;
    }
  }

  async ping(): Promise<void> {
    const channel = await this.connection.createChannel();
    await channel.close();
  }

  async close(): Promise<void> {
    await this.publisher.close().catch(() => {});
    await this.drains.close();
    await this.connection.close().catch(() => {});
  }
}
