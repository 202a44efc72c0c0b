import { envelopeKey } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog, QueuedKey } from "./envelope-log.ts";
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

  /**
   * Reads the device's `queued` rows by keyset: each `next` reads only rows after the last one it
   * handed out (`EnvelopeLog.queuedAfter`), so a device that reads and never acks does not make
   * every batch read its whole backlog again. A row can become `queued` behind the cursor (a
   * `pending` row flushed to the queue late keeps its older `seq`): whenever a read reaches the
   * queue's end, the drain lists the keys at or before its cursor (`queuedKeys`, no ciphertext)
   * and hands out, before the newer rows of that batch and oldest first, those it has not handed
   * out; `next` returns empty only when neither read found anything.
   */
  async drain(userId: string, deviceId: number): Promise<QueueDrain> {
    // envelopeKey → sender user: ids alone do not name an envelope (another sender may reuse one).
    const handedOut = new Map<string, string>();
    // The cursor of the newest row this drain read (null: none yet).
    let cursor: number | null = null;
    const hand = (e: StoredEnvelope): void => {
      handedOut.set(envelopeKey(e), e.senderUser);
    };
    /** Rows at or before the cursor this drain has not handed out: queued behind it (at most `max`). */
    const behind = async (through: number, max: number): Promise<StoredEnvelope[]> => {
      const keys = await this.log.queuedKeys(userId, deviceId, through);
      const late: StoredEnvelope[] = [];
      // A row that left the queue after the keys were listed makes the read for its key return
      // the next row, which its own key reads again: each is taken once.
      const taken = new Set<string>();
      for (let i = 0; i < keys.length && late.length < max; i++) {
        const key = keys[i] as QueuedKey;
        if (handedOut.has(envelopeKey(key)) || taken.has(envelopeKey(key))) continue;
        // The row itself, read after the key before it (rare: one small read per late row).
        const [row] = await this.log.queuedAfter(
          userId,
          deviceId,
          i === 0 ? null : (keys[i - 1] as QueuedKey).cursor,
          1,
        );
        if (!row || row.cursor > through) continue;
        const rowKey = envelopeKey(row.envelope);
        if (handedOut.has(rowKey) || taken.has(rowKey)) continue;
        taken.add(rowKey);
        late.push(row.envelope);
      }
      return late;
    };
    return {
      next: async (max) => {
        const rows = await this.log.queuedAfter(userId, deviceId, cursor, max);
        const from = cursor;
        const fresh: StoredEnvelope[] = [];
        for (const row of rows) {
          cursor = row.cursor;
          if (!handedOut.has(envelopeKey(row.envelope))) fresh.push(row.envelope);
        }
        // The queue's end reached: rows may have been queued behind the cursor meanwhile.
        const late = rows.length < max && from !== null ? await behind(from, max - fresh.length) : [];
        for (const e of late) hand(e);
        for (const e of fresh) hand(e);
        return [...late, ...fresh];
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
      // Every read that reaches the queue's end looks behind the cursor: there is nothing to rewind.
      rewind: () => {},
      // Taken rows never leave the log (they stay `queued` until acked): none goes back.
      release: async () => {
        handedOut.clear();
        cursor = null;
        return 0;
      },
      // The queue is the log: there is no per-device queue to remove.
      emptied: false,
    };
  }

  /** How many envelopes the device's queue holds: counted from their keys, no ciphertext read. */
  async depth(userId: string, deviceId: number): Promise<number> {
    return (await this.queuedKeys(userId, deviceId)).length;
  }

  /** Nothing to remove: a device's queue is its `queued` rows, gone once acked. */
  async remove(): Promise<boolean> {
    return true;
  }

  async idleQueues(_devices: readonly DeviceRef[]): Promise<DeviceRef[]> {
    return [];
  }

  /** Removes every envelope of the device's queue (erasure); resolves with how many. Reads keys, not ciphertexts. */
  async purge(userId: string, deviceId: number): Promise<number> {
    const queued = await this.queuedKeys(userId, deviceId);
    await this.log.ack(userId, deviceId, queued);
    return queued.length;
  }

  /** Removes the device's queued envelopes from `senderUser` (the sender's erasure); resolves with how many. */
  async dropFrom(userId: string, deviceId: number, senderUser: string): Promise<number> {
    // The queue is the log: what the sender's erasure left in it is exactly what to remove.
    const fromSender = (await this.queuedKeys(userId, deviceId)).filter(
      (key) => key.senderUser === senderUser,
    );
    await this.log.ack(userId, deviceId, fromSender);
    return fromSender.length;
  }

  /**
   * What names every envelope of the device's queue, oldest first, without its ciphertext: an
   * erasure's purge of a device with a 10,000-message backlog read every body (up to the frame
   * limit each) to ack them by id, and `depth` read them all to count them.
   */
  private queuedKeys(userId: string, deviceId: number): Promise<QueuedKey[]> {
    return this.log.queuedKeys(userId, deviceId, Number.MAX_SAFE_INTEGER);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {}
}
