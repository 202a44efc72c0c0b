import { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, connect } from "amqplib";
import { UnroutableError } from "./actor-error.ts";
import { type Logger, silentLogger } from "./logger.ts";
import type { Frame, FrameHandler, Transport } from "./transport.ts";

/** Options for {@link AmqpTransport}. */
export interface AmqpTransportOptions {
  nodeId: string;
  /** e.g. `amqp://guest:guest@127.0.0.1:5672`. */
  url: string;
  /** Queue-name prefix, e.g. `clearbox`; tests use a random one per run. Inbox: `<prefix>.node.<id>`. */
  prefix: string;
  /** Unacknowledged transfers per consumer; bounds the memory of envelopes in flight. Default 256. */
  prefetch?: number;
  /** How long an adopted inbox must stay empty before it is deleted. Default 1000 ms. */
  adoptGraceMs?: number;
  logger?: Logger;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Counts deliveries being handled so stop/adopt can wait for them. */
class InFlight {
  count = 0;
  lastDelivery = 0;
  async settled(): Promise<void> {
    while (this.count > 0) await sleep(5);
  }
}

/**
 * RabbitMQ transport: a durable queue per node on the default exchange, persistent messages,
 * publisher confirms (`send` resolves on the broker's ack) and `mandatory` publishing, so a transfer
 * to a deleted inbox comes back as UnroutableError instead of vanishing. Consumers acknowledge a
 * transfer only after every envelope in it was processed or re-forwarded and confirmed.
 */
export class AmqpTransport implements Transport {
  readonly nodeId: string;
  private readonly url: string;
  private readonly prefix: string;
  private readonly prefetch: number;
  private readonly adoptGraceMs: number;
  private readonly logger: Logger;
  private connection: ChannelModel | undefined;
  private publisher: ConfirmChannel | undefined;
  private consumer: Channel | undefined;
  private consumerTag: string | undefined;
  private readonly inFlight = new InFlight();
  private readonly returned = new Set<string>();
  private sequence = 0;
  private closing = false;

  constructor(options: AmqpTransportOptions) {
    if (!options.nodeId) throw new Error('AmqpTransport requires options "nodeId"');
    if (!options.url) throw new Error('AmqpTransport requires options "url" (set AMQP_URL)');
    if (!options.prefix) throw new Error('AmqpTransport requires options "prefix"');
    this.nodeId = options.nodeId;
    this.url = options.url;
    this.prefix = options.prefix;
    this.prefetch = options.prefetch ?? 256;
    this.adoptGraceMs = options.adoptGraceMs ?? 1000;
    this.logger = options.logger ?? silentLogger;
  }

  /** The inbox queue name of a node. */
  queueOf(nodeId: string): string {
    return `${this.prefix}.node.${nodeId}`;
  }

  async start(handler: FrameHandler, onFatal: (error: unknown) => void): Promise<void> {
    const connection = await connect(this.url);
    this.connection = connection;
    connection.on("error", (error) => this.logger.warn({ err: error }, "amqp connection error"));
    connection.on("close", (error?: Error) => {
      if (!this.closing) onFatal(error ?? new Error("amqp connection closed"));
    });
    this.publisher = await connection.createConfirmChannel();
    this.publisher.on("return", (message) => {
      const id = message.properties.messageId;
      if (typeof id === "string") this.returned.add(id);
    });
    this.publisher.on("error", (error) => this.logger.warn({ err: error }, "amqp publisher error"));
    this.consumer = await connection.createChannel();
    this.consumer.on("error", (error) => this.logger.warn({ err: error }, "amqp consumer error"));
    await this.consumer.prefetch(this.prefetch);
    const queue = this.queueOf(this.nodeId);
    await this.consumer.assertQueue(queue, { durable: true });
    const channel = this.consumer;
    const reply = await channel.consume(queue, (message) =>
      this.onDelivery(channel, message, handler, this.inFlight),
    );
    this.consumerTag = reply.consumerTag;
  }

  send(nodeId: string, frames: Frame[]): Promise<void> {
    const publisher = this.publisher;
    if (!publisher) return Promise.reject(new Error("AmqpTransport.send before start"));
    const messageId = `${this.nodeId}:${++this.sequence}`;
    const body = Buffer.from(JSON.stringify(frames));
    return new Promise((resolve, reject) => {
      try {
        publisher.publish(
          "",
          this.queueOf(nodeId),
          body,
          { persistent: true, mandatory: true, messageId, contentType: "application/json" },
          (error) => {
            // The broker sends basic.return before the ack of the same unroutable message.
            if (this.returned.delete(messageId)) reject(new UnroutableError(nodeId));
            else if (error) reject(error instanceof Error ? error : new Error(String(error)));
            else resolve();
          },
        );
      } catch (error) {
        reject(error);
      }
    });
  }

  async adopt(nodeId: string, handler: FrameHandler, shouldStop: () => boolean): Promise<boolean> {
    const connection = this.connection;
    if (!connection || this.closing) return false;
    const queue = this.queueOf(nodeId);
    while (!this.closing) {
      if (!(await this.queueExists(queue))) return true;
      if (shouldStop()) return false;
      const channel = await connection.createChannel();
      channel.on("error", () => undefined);
      const inFlight = new InFlight();
      inFlight.lastDelivery = Date.now();
      try {
        await channel.prefetch(this.prefetch);
        const { consumerTag } = await channel.consume(queue, (message) =>
          this.onDelivery(channel, message, handler, inFlight),
        );
        let stopped = false;
        for (;;) {
          await sleep(100);
          if (this.closing || shouldStop()) {
            stopped = true;
            break;
          }
          const ready = await this.readyCount(queue);
          if (ready === undefined) return true;
          if (ready === 0 && inFlight.count === 0 && Date.now() - inFlight.lastDelivery > this.adoptGraceMs)
            break;
        }
        await channel.cancel(consumerTag);
        await inFlight.settled();
        if (stopped) return false;
        if (await this.deleteIfIdle(queue)) return true;
      } finally {
        await channel.close().catch(() => undefined);
      }
    }
    return false;
  }

  async stop(): Promise<boolean> {
    if (this.closing) return false;
    this.closing = true;
    let deleted = false;
    try {
      if (this.consumer && this.consumerTag) await this.consumer.cancel(this.consumerTag);
      await this.inFlight.settled();
      deleted = await this.deleteIfIdle(this.queueOf(this.nodeId));
    } finally {
      await this.connection?.close().catch(() => undefined);
    }
    return deleted;
  }

  async abort(): Promise<void> {
    this.closing = true;
    // Closing without acknowledging returns every unacknowledged transfer to the inbox, as a crash would.
    await this.connection?.close().catch(() => undefined);
  }

  private onDelivery(
    channel: Channel,
    message: ConsumeMessage | null,
    handler: FrameHandler,
    inFlight: InFlight,
  ): void {
    if (message === null) return;
    inFlight.lastDelivery = Date.now();
    let frames: Frame[];
    try {
      frames = JSON.parse(message.content.toString("utf8")) as Frame[];
      if (!Array.isArray(frames)) throw new Error("transfer is not a frame list");
    } catch (error) {
      this.logger.error({ err: error }, "dropping malformed transfer");
      channel.ack(message);
      return;
    }
    inFlight.count++;
    handler(frames).then(
      () => {
        inFlight.count--;
        try {
          channel.ack(message);
        } catch {
          // The channel died; the broker already returned this transfer to the inbox.
        }
      },
      (error: unknown) => {
        inFlight.count--;
        this.logger.warn({ err: error }, "transfer failed, returning it to the inbox");
        try {
          channel.nack(message, false, true);
        } catch {
          // As above: the broker requeued it when the channel closed.
        }
      },
    );
  }

  /** Ready (not unacknowledged) messages in a queue, or undefined when the queue is gone. */
  private async readyCount(queue: string): Promise<number | undefined> {
    const connection = this.connection as ChannelModel;
    const probe = await connection.createChannel();
    probe.on("error", () => undefined);
    try {
      return (await probe.checkQueue(queue)).messageCount;
    } catch {
      return undefined;
    } finally {
      await probe.close().catch(() => undefined);
    }
  }

  private async queueExists(queue: string): Promise<boolean> {
    return (await this.readyCount(queue)) !== undefined;
  }

  /** Deletes a queue only if nothing is in it and nobody consumes it; the broker checks both atomically. */
  private async deleteIfIdle(queue: string): Promise<boolean> {
    const connection = this.connection as ChannelModel;
    const channel = await connection.createChannel();
    channel.on("error", () => undefined);
    try {
      await channel.deleteQueue(queue, { ifEmpty: true, ifUnused: true });
      return true;
    } catch {
      return false;
    } finally {
      await channel.close().catch(() => undefined);
    }
  }
}
