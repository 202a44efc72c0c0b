import type { AsyncMessage, Channel, Connection, Consumer, Publisher } from "rabbitmq-client";
import { UnroutableError } from "./actor-error.ts";
import { amqpCode, closeQuietly, openAmqpConnection, withChannel } from "./amqp-connect.ts";
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
  /** How long `start` waits for the broker before it rejects. Default 60 s. */
  startupWaitMs?: number;
  logger?: Logger;
}

/**
 * Attempts per transfer: a publish whose channel died (broker crash, connection reset) before its
 * confirm came is published again on the next channel, each attempt waiting up to the connection's
 * acquire timeout (5 s) for the broker. 60 attempts ride out a broker outage of about 5 minutes.
 */
const PUBLISH_ATTEMPTS = 60;

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
 *
 * The connection heals itself (rabbitmq-client: reconnect with exponential backoff and jitter, the
 * inbox consumer re-declared and re-subscribed on every new connection). A transfer whose confirm
 * was outstanding when the connection died is published again (PUBLISH_ATTEMPTS), and transfers
 * sent while the broker is away wait for it; unacknowledged deliveries go back to the inbox and
 * come again (receivers are idempotent per envelope id). `connected` says whether the broker is
 * reachable now (readiness).
 */
export class AmqpTransport implements Transport {
  readonly nodeId: string;
  private readonly url: string;
  private readonly prefix: string;
  private readonly prefetch: number;
  private readonly adoptGraceMs: number;
  private readonly startupWaitMs: number;
  private readonly logger: Logger;
  private rabbit: Connection | undefined;
  private publisher: Publisher | undefined;
  private consumer: Consumer | undefined;
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
    this.startupWaitMs = options.startupWaitMs ?? 60_000;
    this.logger = options.logger ?? silentLogger;
  }

  /** The inbox queue name of a node. */
  queueOf(nodeId: string): string {
    return `${this.prefix}.node.${nodeId}`;
  }

  /** True while the connection to the broker is up (false during an outage and before start). */
  get connected(): boolean {
    return this.rabbit?.ready ?? false;
  }

  /**
   * Connects (waiting up to `startupWaitMs` for the broker, BrokerUnreachableError after), declares
   * this node's inbox and starts consuming it. A lost connection is re-established, never fatal:
   * `_onFatal` is not called by this transport.
   */
  async start(handler: FrameHandler, _onFatal: (error: unknown) => void): Promise<void> {
    const rabbit = await openAmqpConnection({
      url: this.url,
      name: `transport ${this.nodeId}`,
      startupWaitMs: this.startupWaitMs,
      logger: this.logger,
    });
    this.rabbit = rabbit;
    this.publisher = rabbit.createPublisher({
      confirm: true,
      maxAttempts: PUBLISH_ATTEMPTS,
      onReturn: (message) => {
        if (typeof message.messageId === "string") this.returned.add(message.messageId);
      },
    });
    this.publisher.on("retry", (error) =>
      this.logger.debug({ err: error }, "transfer not confirmed; publishing it again"),
    );
    const queue = this.queueOf(this.nodeId);
    const consumer = rabbit.createConsumer(
      {
        queue,
        queueOptions: { durable: true },
        qos: { prefetchCount: this.prefetch },
        concurrency: this.prefetch,
        requeue: true,
        // The only consumer of its inbox: a survivor that takes this node for dead while it is
        // alive (a heartbeat that lapsed under load) cannot take transfers meant for it, and this
        // node cannot come back to an inbox a survivor is still adopting (it retries until then).
        exclusive: true,
      },
      (message) => this.onDelivery(message, handler, this.inFlight),
    );
    this.consumer = consumer;
    consumer.on("error", (error) =>
      this.logger.warn({ err: error }, "transfer failed or inbox consumer reset; it is delivered again"),
    );
    // The inbox exists and is consumed before the node joins the ring.
    await new Promise<void>((resolve) => consumer.once("ready", () => resolve()));
  }

  send(nodeId: string, frames: Frame[]): Promise<void> {
    const publisher = this.publisher;
    if (!publisher) return Promise.reject(new Error("AmqpTransport.send before start"));
    const messageId = `${this.nodeId}:${++this.sequence}`;
    const body = Buffer.from(JSON.stringify(frames));
    return publisher
      .send(
        {
          routingKey: this.queueOf(nodeId),
          durable: true,
          mandatory: true,
          messageId,
          contentType: "application/json",
        },
        body,
      )
      .then(
        () => {
          // The broker sends basic.return before the ack of the same unroutable message.
          if (this.returned.delete(messageId)) throw new UnroutableError(nodeId);
        },
        (error: unknown) => {
          this.returned.delete(messageId);
          throw error instanceof Error ? error : new Error(String(error));
        },
      );
  }

  async adopt(nodeId: string, handler: FrameHandler, shouldStop: () => boolean): Promise<boolean> {
    const rabbit = this.rabbit;
    if (!rabbit || this.closing) return false;
    const queue = this.queueOf(nodeId);
    while (!this.closing) {
      const state = await this.queueState(queue);
      if (state === undefined) return true;
      // Its node still consumes it: alive after all (taken for dead while slow, or its key lost),
      // and what waits there is its own (replies to its asks, handoff notices, its sockets'
      // commands). Left alone; the next maintenance pass looks again.
      if (state.consumerCount > 0 || shouldStop()) return false;
      const channel = await rabbit.acquire();
      const inFlight = new InFlight();
      inFlight.lastDelivery = Date.now();
      try {
        await channel.basicQos({ prefetchCount: this.prefetch });
        let consumerTag: string;
        try {
          ({ consumerTag } = await channel.basicConsume({ queue }, (message) => {
            void this.deliverOn(channel, message, handler, inFlight);
          }));
        } catch (error) {
          // Its node (an exclusive consumer) came back between the look and the consume.
          if (amqpCode(error) === "ACCESS_REFUSED") return false;
          throw error;
        }
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
        await channel.basicCancel({ consumerTag });
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
      // Stops consuming and waits for the transfers being handled (their acks go out first).
      await this.consumer?.close().catch(() => undefined);
      await this.inFlight.settled();
      deleted = await this.deleteIfIdle(this.queueOf(this.nodeId));
      await this.publisher?.close().catch(() => undefined);
    } finally {
      if (this.rabbit) await closeQuietly(this.rabbit);
    }
    return deleted;
  }

  async abort(): Promise<void> {
    this.closing = true;
    // Dropping the connection without acknowledging returns every unacknowledged transfer to the
    // inbox, as a crash would.
    this.rabbit?.unsafeDestroy();
  }

  /** The inbox consumer's handler: resolves to ack, throws to return the transfer to the inbox. */
  private async onDelivery(message: AsyncMessage, handler: FrameHandler, inFlight: InFlight): Promise<void> {
    inFlight.lastDelivery = Date.now();
    const frames = this.decode(message);
    if (frames === undefined) return; // acknowledged: a malformed transfer never gets better
    inFlight.count++;
    try {
      await handler(frames);
    } finally {
      inFlight.count--;
    }
  }

  /** Delivery on an adoption channel: ack after the handler, nack (requeue) when it failed. */
  private async deliverOn(
    channel: Channel,
    message: AsyncMessage,
    handler: FrameHandler,
    inFlight: InFlight,
  ): Promise<void> {
    try {
      await this.onDelivery(message, handler, inFlight);
    } catch (error) {
      this.logger.warn({ err: error }, "transfer failed, returning it to the inbox");
      try {
        channel.basicNack({ deliveryTag: message.deliveryTag, requeue: true });
      } catch {
        // A dead channel already returned it to the inbox.
      }
      return;
    }
    try {
      channel.basicAck({ deliveryTag: message.deliveryTag });
    } catch {
      // As above: the broker requeued it when the channel closed.
    }
  }

  /** The frames of a transfer, or undefined (logged) when it is not a JSON frame list. */
  private decode(message: AsyncMessage): Frame[] | undefined {
    try {
      // rabbitmq-client parses `application/json` bodies itself; anything else arrives as bytes.
      const body: unknown = message.body;
      const frames = Buffer.isBuffer(body)
        ? JSON.parse(body.toString("utf8"))
        : typeof body === "string"
          ? JSON.parse(body)
          : body;
      if (!Array.isArray(frames)) throw new Error("transfer is not a frame list");
      return frames as Frame[];
    } catch (error) {
      this.logger.error({ err: error }, "dropping malformed transfer");
      return undefined;
    }
  }

  /**
   * A queue's ready (not unacknowledged) messages and its consumers, as the broker counts them
   * (a passive declare), or undefined when the queue is gone.
   */
  private async queueState(
    queue: string,
  ): Promise<{ messageCount: number; consumerCount: number } | undefined> {
    const rabbit = this.rabbit as Connection;
    try {
      const { messageCount, consumerCount } = await withChannel(rabbit, (channel) =>
        channel.queueDeclare({ queue, passive: true }),
      );
      return { messageCount, consumerCount };
    } catch (error) {
      if (amqpCode(error) === "NOT_FOUND") return undefined;
      throw error;
    }
  }

  /** Ready (not unacknowledged) messages in a queue, or undefined when the queue is gone. */
  private async readyCount(queue: string): Promise<number | undefined> {
    return (await this.queueState(queue))?.messageCount;
  }

  /** Deletes a queue only if nothing is in it and nobody consumes it; the broker checks both atomically. */
  private async deleteIfIdle(queue: string): Promise<boolean> {
    const rabbit = this.rabbit;
    if (!rabbit) return false;
    try {
      await withChannel(rabbit, (channel) => channel.queueDelete({ queue, ifEmpty: true, ifUnused: true }));
      return true;
    } catch {
      return false;
    }
  }
}
