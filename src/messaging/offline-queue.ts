import type { EnvelopeRef } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";

/** Envelopes taken from a device's offline queue, held until the device acks them. */
export interface QueueDrain {
  /** The next envelopes in queue order (at most `max`); empty once the queue is drained. */
  next(max: number): Promise<StoredEnvelope[]>;
  /** The device has these (each named by id and sender device): remove them from the queue for good. */
  ack(envelopes: readonly EnvelopeRef[]): Promise<void>;
  /**
   * Erasure of `senderUser`: the envelopes from them taken by this drain and not yet acked are
   * removed from the queue for good (they would go back to it on `release`); returns how many.
   */
  dropFrom(senderUser: string): Promise<number>;
  /**
   * Reads the queue again from its head: the next `next` takes what came into it since it was
   * found empty (envelopes another drain of the device gave back when it ended), and none of those
   * this drain holds. Nothing for stores whose `next` always reads the queue afresh.
   */
  rewind(): void;
  /**
   * Ends the drain; envelopes taken but not acked go back to the queue, in order. Resolves with how
   * many went back (0 for stores where nothing leaves the queue while taken): a socket of the same
   * device whose drain read the queue before then has not seen them (docs/MESSAGING.md, "A drain
   * that ends after another began").
   */
  release(): Promise<number>;
  /**
   * True once the device's queue existed, was read to its end and everything taken from it was
   * acked: the queue is now an idle one, which the device's user actor may remove
   * (`OfflineQueue.remove`). Always false for stores that keep no per-device queue.
   */
  readonly emptied: boolean;
}

/** A device whose offline queue is looked at by the idle-queue sweep. */
export interface DeviceRef {
  userId: string;
  deviceId: number;
}

/**
 * A durable per-device queue for envelopes whose device was offline (protocol: delivered on
 * reconnect, oldest first). RabbitMQ in production; the envelope log itself in the embedded default.
 */
export interface OfflineQueue {
  readonly kind: string;
  /** Appends in order; resolves once the envelopes are durable (publisher confirms). */
  flush(userId: string, deviceId: number, envelopes: readonly StoredEnvelope[]): Promise<void>;
  /** Starts taking envelopes from the device's queue; one drain per device at a time. */
  drain(userId: string, deviceId: number): Promise<QueueDrain>;
  /** Messages waiting in the device's queue. */
  depth(userId: string, deviceId: number): Promise<number>;
  /**
   * Deletes the device's queue if no message waits in it for delivery; true when it is gone
   * afterwards (removed now, or there was none), false when it still holds messages.
   * Messages a drain has taken and not acked do NOT count as waiting (RabbitMQ's `if-empty` looks
   * at ready messages only), so only the device's user actor calls this, after checking the log for
   * queued envelopes, in its mailbox where no flush to the same queue can run
   * (docs/MESSAGING.md, "Queues follow the backlog").
   */
  remove(userId: string, deviceId: number): Promise<boolean>;
  /**
   * Of `devices`, those that have a queue holding no ready message: idle queues, as every queue
   * of a device that was ever offline with a message was before queues followed the backlog (kept
   * until `x-expires`). The sweep asks their user actors
   * to remove them. Stores without per-device queues return none.
   */
  idleQueues(devices: readonly DeviceRef[]): Promise<DeviceRef[]>;
  /** Deletes the device's queue and what it holds (device removal, erasure); returns how many were dropped. */
  purge(userId: string, deviceId: number): Promise<number>;
  /**
   * Removes the envelopes from `senderUser` waiting in one device's queue, keeping the rest in
   * order (erasure of the sender); returns how many were removed.
   */
  dropFrom(userId: string, deviceId: number, senderUser: string): Promise<number>;
  /** Resolves when the backing broker answers (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
