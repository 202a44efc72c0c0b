import type { Channel, Connection } from "rabbitmq-client";
import { settledWithin } from "./deadlines.ts";
import type { Logger } from "./logger.ts";

/**
 * Reconnect backoff of every RabbitMQ connection: rabbitmq-client waits a random delay between
 * `retryLow` and min(`retryHigh`, `retryLow`·2^attempt) before each new attempt (exponential
 * backoff with full jitter, `expBackoff` in rabbitmq-client's lib/util.js), in milliseconds.
 */
export const AMQP_RETRY_LOW_MS = 250;
export const AMQP_RETRY_HIGH_MS = 5_000;
/** Heartbeat timeout negotiated with the broker, in seconds: a silent broker is taken for dead after it. */
export const AMQP_HEARTBEAT_SECONDS = 10;
/**
 * Largest AMQP frame asked for, in bytes: 128 KiB, RabbitMQ's own default `frame_max` (the broker
 * and client agree on the smaller of their two). rabbitmq-client asks for 8 KiB by default, which
 * splits a 26 KB transfer between nodes into four body frames, each its own socket write on both
 * ends (docs/BENCHMARKS.md "Three nodes, stop 31").
 */
export const AMQP_FRAME_MAX_BYTES = 131_072;

/** The broker did not accept a connection within the start-up wait. */
export class BrokerUnreachableError extends Error {
  constructor(
    readonly waitedMs: number,
    readonly lastError: unknown,
  ) {
    super(
      `RabbitMQ did not accept a connection within ${Math.round(waitedMs / 1000)} s` +
        (lastError instanceof Error ? ` (last error: ${lastError.message})` : ""),
    );
    this.name = "BrokerUnreachableError";
  }
}

/**
 * Opens a self-healing RabbitMQ connection (rabbitmq-client `Connection`: reconnects with the
 * backoff above, re-creates consumers and publishers' channels) and waits for its first connect for
 * at most `startupWaitMs`, logging progress every 5 s. Every connection error is logged, never
 * thrown; a lost connection is logged once when lost and once when back.
 *
 * Rejects with {@link BrokerUnreachableError} (the connection is closed) when the broker stays
 * unreachable for the whole wait.
 */
export async function openAmqpConnection(options: {
  url: string;
  /** Shown to the broker (`connection_name`) and in logs, e.g. `transport`, `offline-queue`. */
  name: string;
  startupWaitMs: number;
  logger: Logger;
}): Promise<Connection> {
  const { url, name, startupWaitMs, logger } = options;
  // Imported here, not at the top: a node without AMQP_URL (the embedded default) never loads it.
  const { Connection } = await import("rabbitmq-client");
  const rabbit = new Connection({
    url,
    connectionName: `clearbox ${name}`,
    retryLow: AMQP_RETRY_LOW_MS,
    retryHigh: AMQP_RETRY_HIGH_MS,
    heartbeat: AMQP_HEARTBEAT_SECONDS,
    frameMax: AMQP_FRAME_MAX_BYTES,
    connectionTimeout: 5_000,
    // A channel wanted while the broker is away waits this long, then the caller gets an error.
    acquireTimeout: 5_000,
  });
  let down = false;
  let connectedOnce = false;
  let lastError: unknown;
  rabbit.on("error", (error) => {
    lastError = error;
    // Before the first connect, the start-up wait logs progress instead.
    if (!down && connectedOnce)
      logger.warn({ amqp: name, err: error }, "rabbitmq connection lost; reconnecting");
    down = true;
  });
  rabbit.on("connection", () => {
    if (down) logger.info({ amqp: name }, "rabbitmq connection re-established");
    down = false;
  });
  const started = Date.now();
  const progress = setInterval(() => {
    logger.warn(
      {
        amqp: name,
        waitedSeconds: Math.round((Date.now() - started) / 1000),
        startupWaitSeconds: Math.round(startupWaitMs / 1000),
        err: lastError,
      },
      "waiting for rabbitmq",
    );
  }, 5_000);
  try {
    await rabbit.onConnect(startupWaitMs, true);
  } catch {
    await closeQuietly(rabbit);
    throw new BrokerUnreachableError(Date.now() - started, lastError);
  } finally {
    clearInterval(progress);
  }
  down = false;
  connectedOnce = true;
  return rabbit;
}

/** Closes a connection without waiting on the broker for long: gives up after 2 s and destroys it. */
export async function closeQuietly(rabbit: Connection): Promise<void> {
  const closed = rabbit.close().catch(() => {});
  if (!(await settledWithin(closed, 2_000))) rabbit.unsafeDestroy();
}

/** The AMQP reply code of a failed channel operation, e.g. `NOT_FOUND` (404) for a missing queue. */
export function amqpCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Runs `use` on a channel of its own, closed afterwards: a failed operation (404 on a passive
 * declare, 406 on a conditional delete) closes only that channel, not one shared with other callers.
 */
export async function withChannel<T>(rabbit: Connection, use: (channel: Channel) => Promise<T>): Promise<T> {
  const channel = await rabbit.acquire();
  try {
    return await use(channel);
  } finally {
    await channel.close().catch(() => {});
  }
}
