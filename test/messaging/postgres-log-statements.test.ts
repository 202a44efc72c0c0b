import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type Database, openDatabase } from "../../src/db/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { backendReader, frontendReader } from "../support/pg-wire.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";

// What the PostgreSQL log's hot writes cost on the wire: every message the pool sends is read
// through a proxy, so the counts are the protocol's, not timings.
const POOL = 2;
const ROUNDS = 12;

let testDb: TestDatabase;
let proxy: TcpProxy;
let database: Database;
/**
 * Parse messages by statement kind, and Flush messages after one of them (a describe-first round
 * trip: postgres.js sends Parse, Describe and Flush and waits for the parameters' types).
 */
const parses = { append: 0, ack: 0, queued: 0 };
let flushes = 0;
let counting = false;
/** DataRow messages the server sent while `countingRows` (every connection of the pool). */
let dataRows = 0;
let countingRows = false;

beforeAll(async () => {
  testDb = await createTestDatabase();
  const readers = new Map<number, (chunk: Buffer) => void>();
  const rowReaders = new Map<number, (chunk: Buffer) => void>();
  proxy = await startTcpProxy(testDb.url, {
    onClientData: (chunk, connection) => {
      let read = readers.get(connection);
      if (!read) {
        let hot = false;
        read = frontendReader((type, statement) => {
          if (!counting) return;
          if (type === "H" && hot) flushes++;
          if (type !== "P") return;
          const text = statement?.trim() ?? "";
          hot = true;
          // The append and the ack are data-modifying CTEs (`with written as (insert …`).
          if (/^(with written as \(\s*)?insert into envelopes/.test(text)) parses.append++;
          else if (/^(with changed as \(\s*)?update envelopes as e set state = 'acked'/.test(text))
            parses.ack++;
          else if (text.startsWith("update envelopes as e set state = 'queued'")) parses.queued++;
          else hot = false;
        });
        readers.set(connection, read);
      }
      read(chunk);
    },
    onServerData: (chunk, connection) => {
      let read = rowReaders.get(connection);
      if (!read) {
        read = backendReader((type) => {
          if (countingRows && type === "D") dataRows++;
        });
        rowReaders.set(connection, read);
      }
      read(chunk);
    },
  });
  const url = new URL(testDb.url);
  url.port = String(proxy.port);
  database = await openDatabase({ databaseUrl: url.toString(), dataDir: null, poolSize: POOL });
});

afterAll(async () => {
  await database?.close();
  await proxy?.close();
  await testDb?.drop();
});

function envelope(recipientUser: string, senderUser: string): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser,
    senderDevice: 1,
    recipientUser,
    recipientDevice: 1,
    groupId: null,
    ts: Date.now(),
    type: 1,
    body: Buffer.from(randomUUID()).toString("base64"),
  };
}

test("appends, acks and queued marks are parsed once per pooled connection, each later one a single round trip", async () => {
  const log = new PostgresEnvelopeLog(database.db);
  const recipient = randomUUID();
  const sender = randomUUID();
  counting = true;
  for (let round = 0; round < ROUNDS; round++) {
    const acked = envelope(recipient, sender);
    const queued = envelope(recipient, sender);
    // One at a time: each its own group-commit write, so each a statement of its own.
    expect(await log.append([acked])).toEqual([true]);
    expect(await log.append([queued])).toEqual([true]);
    expect(await log.ack(recipient, 1, [acked])).toBe(1);
    await log.markQueued(recipient, 1, [queued]);
  }
  counting = false;
  // Unprepared (drizzle's default), each of the 24 appends, 12 acks and 12 marks was parsed anew
  // and cost a Parse/Describe/Flush round trip before its Bind/Execute.
  expect(parses.append).toBeGreaterThan(0);
  expect(parses.append).toBeLessThanOrEqual(POOL);
  expect(parses.ack).toBeGreaterThan(0);
  expect(parses.ack).toBeLessThanOrEqual(POOL);
  expect(parses.queued).toBeGreaterThan(0);
  expect(parses.queued).toBeLessThanOrEqual(POOL);
  expect(flushes).toBeLessThanOrEqual(3 * POOL);
  // The writes did what they say: nothing pending, every queued envelope marked.
  expect(await log.undelivered(recipient, { state: "pending" })).toEqual([]);
  expect((await log.undelivered(recipient, { state: "queued" })).length).toBe(ROUNDS);
});

test("an append whose envelopes are all new and an ack that acks all it names answer with one row each, not one per envelope", async () => {
  const log = new PostgresEnvelopeLog(database.db);
  const recipient = randomUUID();
  const sender = randomUUID();
  const batch = Array.from({ length: 20 }, () => envelope(recipient, sender));
  dataRows = 0;
  countingRows = true;
  // One call, one group-commit write: one INSERT, then one ack UPDATE.
  expect(await log.append(batch)).toEqual(batch.map(() => true));
  const afterAppend = dataRows;
  expect(await log.ack(recipient, 1, batch)).toBe(20);
  countingRows = false;
  // Each returned a row per envelope (5 columns each, decoded and keyed in the node): 20 and 20.
  expect(afterAppend).toBe(1);
  expect(dataRows - afterAppend).toBe(1);

  // Where not all were new or matched, the rows still say which: a re-sent id is not new, the same
  // envelope twice in one batch is new once, an id acked before is not counted again. Large batches
  // (the counting statement) and small ones (plain `returning`) alike.
  for (const size of [20, 3]) {
    const fresh = Array.from({ length: size - 2 }, () => envelope(recipient, sender));
    const twice = fresh[0] as StoredEnvelope;
    const resent = batch[0] as StoredEnvelope;
    expect(await log.append([resent, ...fresh, twice])).toEqual([false, ...fresh.map(() => true), false]);
    const ackedBefore = batch[1] as StoredEnvelope;
    expect(await log.ack(recipient, 1, [ackedBefore, ...fresh])).toBe(fresh.length);
    expect(await log.ack(recipient, 1, [...fresh, twice])).toBe(0);
  }
  expect(await log.append([])).toEqual([]);
  const upper = Array.from({ length: 20 }, () => envelope(recipient, sender));
  expect(await log.append(upper)).toEqual(upper.map(() => true));
  expect(
    await log.ack(
      recipient,
      1,
      upper.map((e) => ({ ...e, id: e.id.toUpperCase() })),
    ),
  ).toBe(20);
  expect(await log.undelivered(recipient, { state: "pending" })).toEqual([]);
});
