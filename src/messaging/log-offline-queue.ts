import { envelopeKey } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog } from "./envelope-log.ts";
import type { DeviceRef, OfflineQueue, QueueDrain } from "./offline-queue.ts";

/**
 * The embedded default's offline queue: the envelopes stay in the (PGlite) envelope log, marked
 * `queued`, and a drain reads them back in acceptance order. Acks go to the log as for live delivery.
 */
export class LogOfflineQueue implements OfflineQueue {
  readonly kind = "embedded";

  constructor(private readonly log: EnvelopeLog) {}

  async flush(userId: string, deviceId: number, envelopes: readonly StoredEnvelope[]): Promise<void> {
    await this.log.markQueued(userId, deviceId, envelopes);
  }

  async drain(userId: string, deviceId: number): Promise<QueueDrain> {
    // envelopeKey → sender user: ids alone do not name an envelope (another sender may reuse one).
    const handedOut = new Map<string, string>();
    return {
      next: async (max) => {
        const queued = await this.log.undelivered(userId, {
          device: deviceId,
          state: "queued",
          limit: max + handedOut.size,
        });
        const fresh = queued.filter((e) => !handedOut.has(envelopeKey(e))).slice(0, max);
        for (const e of fresh) handedOut.set(envelopeKey(e), e.senderUser);
        return fresh;
      },
      ack: async (refs) => {
        await this.log.ack(userId, deviceId, refs);
        for (const ref of refs) handedOut.delete(envelopeKey(ref));
      },
      // The log is the queue here: erasure's history step removes the sender's rows themselves.
      dropFrom: async (senderUser) => {
        let dropped = 0;
        for (const [key, sender] of handedOut) {
          if (sender !== senderUser) continue;
          handedOut.delete(key);
          dropped++;
        }
        return dropped;
      },
      // Every `next` reads the log afresh: there is nothing to rewind.
      rewind: () => {},
      // Taken rows never leave the log (they stay `queued` until acked): none goes back.
      release: async () => {
        handedOut.clear();
        return 0;
      },
      // The queue is the log: there is no per-device queue to remove.
      emptied: false,
    };
  }

  async depth(userId: string, deviceId: number): Promise<number> {
    return (await this.log.undelivered(userId, { device: deviceId, state: "queued" })).length;
  }

  /** Nothing to remove: a device's queue is its `queued` rows, gone once acked. */
  async remove(): Promise<boolean> {
    return true;
  }

  async idleQueues(_devices: readonly DeviceRef[]): Promise<DeviceRef[]> {
    return [];
  }

  async purge(userId: string, deviceId: number): Promise<number> {
    const queued = await this.log.undelivered(userId, { device: deviceId, state: "queued" });
    await this.log.ack(userId, deviceId, queued);
    return queued.length;
  }

  async dropFrom(userId: string, deviceId: number, senderUser: string): Promise<number> {
    // The queue is the log: what the sender's erasure left in it is exactly what to remove.
    const queued = await this.log.undelivered(userId, { device: deviceId, state: "queued" });
    const fromSender = queued.filter((e) => e.senderUser === senderUser);
    await this.log.ack(userId, deviceId, fromSender);
    return fromSender.length;
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {}
}
