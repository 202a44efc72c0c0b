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

/**
 * Offline queues in RabbitMQ: one durable classic queue per device, persistent messages, publisher
 * confirms. Retention is the queue's `x-message-ttl`, and a queue unused for the retention period
 * expires (`x-expires`). A drain takes messages with basic.get and acks each only after the device did.
 */
export class AmqpOfflineQueue implements OfflineQueue {
  readonly kind = "rabbitmq";
  private readonly declared = new Set<string>();

  private constructor(
    private readonly connection: ChannelModel,
    private readonly publisher: ConfirmChannel,
    private readonly prefix: string,
    private readonly retentionMs: number,
  ) {}

  /** Connects; `prefix` names the queues (`<prefix>.dev.<user>.<device>`), tests pass a random one. */
  static async open(
    url: string,
    options: { prefix: string; retentionDays: number },
  ): Promise<AmqpOfflineQueue> {
    const connection = await connect(url);
    const publisher = await connection.createConfirmChannel();
    return new AmqpOfflineQueue(connection, publisher, options.prefix, options.retentionDays * 86_400_000);
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
    const channel = await this.connection.createChannel();
    await this.declare(channel, name);
    const taken = new Map<string, GetMessage[]>();
    let open = true;
    return {
      next: async (max) => {
        const out: StoredEnvelope[] = [];
        while (open && out.length < max) {
          const message = await channel.get(name, { noAck: false });
          if (message === false) break;
          const envelope = decode(message.content);
          const held = taken.get(envelope.id);
          if (held) held.push(message);
          else taken.set(envelope.id, [message]);
          out.push(envelope);
        }
        return out;
      },
      ack: async (ids) => {
        for (const id of ids) {
          for (const message of taken.get(id) ?? []) channel.ack(message);
          taken.delete(id);
        }
      },
      release: async () => {
        if (!open) return;
        open = false;
        // Closing the channel returns every unacked message to the queue in its original position.
        await channel.close().catch(() => {});
      },
    };
  }

  async depth(userId: string, deviceId: number): Promise<number> {
    const channel = await this.connection.createChannel();
    try {
      const name = this.queueName(userId, deviceId);
      await this.declare(channel, name);
      return (await channel.checkQueue(name)).messageCount;
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
    await this.connection.close().catch(() => {});
  }
}
