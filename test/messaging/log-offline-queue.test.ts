import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { openDatabase } from "../../src/db/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import type { EnvelopeLog } from "../../src/messaging/envelope-log.ts";
import { LogOfflineQueue } from "../../src/messaging/log-offline-queue.ts";
import type { QueueDrain } from "../../src/messaging/offline-queue.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";

function envelope(recipientUser: string, recipientDevice = 1): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser,
    recipientDevice,
    groupId: null,
    ts: Date.now(),
    type: 3,
    body: Buffer.from(`ciphertext-${randomUUID()}`).toString("base64"),
  };
}

/**
 * Counts the rows the log hands back with their ciphertext, through whichever read a drain uses
 * (`undelivered` before the keyset cursor, `queuedAfter` since): the real log underneath.
 */
function countCiphertextReads(log: EnvelopeLog): { rows: number } {
  const count = { rows: 0 };
  const undelivered = log.undelivered.bind(log);
  log.undelivered = async (...args) => {
    const rows = await undelivered(...args);
    count.rows += rows.length;
    return rows;
  };
  const queuedAfter = log.queuedAfter.bind(log);
  log.queuedAfter = async (...args) => {
    const rows = await queuedAfter(...args);
    count.rows += rows.length;
    return rows;
  };
  return count;
}

/** Every batch of `drain` until it returns none, `max` at a time, acking nothing. */
async function readToEnd(drain: QueueDrain, max: number): Promise<StoredEnvelope[]> {
  const taken: StoredEnvelope[] = [];
  for (;;) {
    const batch = await drain.next(max);
    if (batch.length === 0) return taken;
    taken.push(...batch);
  }
}

const logs: [string, () => Promise<{ log: EnvelopeLog; close(): Promise<void> }>][] = [
  [
    "SQLite (embedded)",
    async () => {
      const log = await SqliteEnvelopeLog.open(null);
      return { log, close: () => log.close() };
    },
  ],
  [
    "PGlite",
    async () => {
      const database = await openDatabase({ dataDir: null });
      return { log: new PostgresEnvelopeLog(database.db), close: () => database.close() };
    },
  ],
];

for (const [name, open] of logs) {
  describe(`LogOfflineQueue drains (${name})`, () => {
    let subject: { log: EnvelopeLog; close(): Promise<void> };
    beforeAll(async () => {
      subject = await open();
    });
    afterAll(() => subject?.close());

    test("a reader that never acks makes each drain read each queued row once, in order", async () => {
      const { log } = subject;
      const user = randomUUID();
      const backlog = Array.from({ length: 1_500 }, () => envelope(user));
      await log.append(backlog);
      const queue = new LogOfflineQueue(log);
      await queue.flush(user, 1, backlog);
      const reads = countCiphertextReads(log);

      const drain = await queue.drain(user, 1);
      const taken = await readToEnd(drain, 256);
      expect(taken.map((e) => e.id)).toEqual(backlog.map((e) => e.id));
      // Before the keyset cursor each batch of 256 read everything handed out again: 6,840 rows.
      expect(reads.rows).toBe(backlog.length);
      await drain.release();

      // The next connect's drain reads the backlog once more, and again only once.
      reads.rows = 0;
      const again = await queue.drain(user, 1);
      expect((await readToEnd(again, 256)).map((e) => e.id)).toEqual(backlog.map((e) => e.id));
      expect(reads.rows).toBe(backlog.length);
      await again.release();
    });

    test("a row queued behind the cursor still comes in the same drain, before newer ones, and once", async () => {
      const { log } = subject;
      const user = randomUUID();
      const [a, b, c, d, e] = Array.from({ length: 5 }, () => envelope(user)) as [
        StoredEnvelope,
        StoredEnvelope,
        StoredEnvelope,
        StoredEnvelope,
        StoredEnvelope,
      ];
      await log.append([a, b, c, d, e]);
      const queue = new LogOfflineQueue(log);
      await queue.flush(user, 1, [b, c]);
      const drain = await queue.drain(user, 1);
      expect((await drain.next(10)).map((x) => x.id)).toEqual([b.id, c.id]);
      // a (older than the cursor) and e are flushed to the queue after the drain passed a's place.
      await queue.flush(user, 1, [a, e]);
      expect((await drain.next(10)).map((x) => x.id)).toEqual([a.id, e.id]);
      expect(await drain.next(10)).toEqual([]);
      // d, older than the cursor too, while the drain is at the queue's end.
      await queue.flush(user, 1, [d]);
      expect((await drain.next(10)).map((x) => x.id)).toEqual([d.id]);
      expect(await drain.next(10)).toEqual([]);

      // Exactly once after the ack: what is acked never comes again, the rest comes in order.
      await drain.ack([a, c]);
      await drain.release();
      const next = await queue.drain(user, 1);
      expect((await readToEnd(next, 1)).map((x) => x.id)).toEqual([b.id, d.id, e.id]);
      await next.ack([b, d, e]);
      await next.release();
      expect(await queue.depth(user, 1)).toBe(0);
    });

    test("depth, purge and a sender's dropFrom count and remove the queue without reading a ciphertext", async () => {
      const { log } = subject;
      const user = randomUUID();
      const erased = randomUUID();
      const backlog = Array.from({ length: 300 }, (_, i) => ({
        ...envelope(user),
        ...(i % 3 === 0 ? { senderUser: erased } : {}),
      }));
      await log.append(backlog);
      const queue = new LogOfflineQueue(log);
      await queue.flush(user, 1, backlog);
      const reads = countCiphertextReads(log);

      expect(await queue.depth(user, 1)).toBe(300);
      expect(await queue.dropFrom(user, 1, erased)).toBe(100);
      expect(await queue.depth(user, 1)).toBe(200);
      expect(reads.rows).toBe(0);
      const left = await queue.drain(user, 1);
      expect((await readToEnd(left, 500)).every((e) => e.senderUser !== erased)).toBe(true);
      await left.release();
      reads.rows = 0;
      expect(await queue.purge(user, 1)).toBe(200);
      expect(await queue.depth(user, 1)).toBe(0);
      // Only the drain read bodies; before, each of these calls read the whole queue's.
      expect(reads.rows).toBe(0);
    });

    test("a row behind the cursor that leaves the queue while the drain looks behind does not bring the next one twice", async () => {
      const { log } = subject;
      const user = randomUUID();
      const [a, b, c] = Array.from({ length: 3 }, () => envelope(user)) as [
        StoredEnvelope,
        StoredEnvelope,
        StoredEnvelope,
      ];
      await log.append([a, b, c]);
      const queue = new LogOfflineQueue(log);
      await queue.flush(user, 1, [c]);
      const drain = await queue.drain(user, 1);
      expect((await drain.next(10)).map((x) => x.id)).toEqual([c.id]);
      // a and b are queued behind the cursor; a leaves the queue (acked on another path, or its
      // sender's erasure) between the drain's list of keys and its read of a's row.
      await queue.flush(user, 1, [a, b]);
      const queuedKeys = log.queuedKeys.bind(log);
      log.queuedKeys = async (...args) => {
        const keys = await queuedKeys(...args);
        log.queuedKeys = queuedKeys;
        await log.ack(user, 1, [a]);
        return keys;
      };
      try {
        expect((await drain.next(10)).map((x) => x.id)).toEqual([b.id]);
        expect(await drain.next(10)).toEqual([]);
      } finally {
        log.queuedKeys = queuedKeys;
      }
      await drain.ack([b, c]);
      await drain.release();
      expect(await queue.depth(user, 1)).toBe(0);
    });
  });
}
