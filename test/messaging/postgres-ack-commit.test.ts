import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import postgres from "postgres";
import { openDatabase } from "../../src/db/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { OwnPostgres } from "../support/own-postgres.ts";

// WAL flushes are only counted with fsync on (pg_stat_wal.wal_sync), so this needs a private cluster
// of its own: the shared server's flushes include every other test's. The WAL writer flushes what
// asynchronous commits leave at most once per wal_writer_delay: 10 s keeps it out of the count.
let pg: OwnPostgres;

beforeAll(async () => {
  pg = await OwnPostgres.start({ fsync: "on", wal_writer_delay: "10s" });
}, 60_000);

afterAll(async () => {
  await pg?.stop();
});

const N = 30;

function envelope(): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser: randomUUID(),
    recipientDevice: 1,
    groupId: null,
    ts: Date.now(),
    type: 1,
    body: Buffer.from(`ciphertext-${randomUUID()}`).toString("base64"),
  };
}

/** The cluster's WAL flushes (fsyncs) while `work` runs on a log of its own, counted once its connections closed. */
async function walFlushesDuring(
  url: string,
  work: (log: PostgresEnvelopeLog) => Promise<void>,
): Promise<number> {
  const admin = postgres(pg.url(), { max: 1, onnotice: () => {} });
  try {
    const database = await openDatabase({ databaseUrl: url, dataDir: null });
    await admin`select pg_stat_reset_shared('wal')`;
    try {
      await work(new PostgresEnvelopeLog(database.db));
    } finally {
      await database.close();
    }
    // A backend reports its WAL statistics when it exits: wait for the log's connections to go.
    const name = new URL(url).pathname.slice(1);
    for (let i = 0; i < 100; i++) {
      const [{ n }] = await admin<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity where datname = ${name} and pid <> pg_backend_pid()`;
      if (n === 0) break;
      await Bun.sleep(50);
    }
    const [{ syncs }] = await admin<{ syncs: string }[]>`select wal_sync::text as syncs from pg_stat_wal`;
    return Number(syncs);
  } finally {
    await admin.end();
  }
}

test("an ack commits without waiting for its WAL flush; an append still waits for its own", async () => {
  const url = await pg.createDatabase(`cb_ack_${randomUUID().replaceAll("-", "")}`);
  const messages = Array.from({ length: N }, envelope);
  // One at a time: each append and each ack is a group commit of its own, so a commit of its own.
  const appendFlushes = await walFlushesDuring(url, async (log) => {
    for (const m of messages) expect(await log.append([m])).toEqual([true]);
  });
  let acked = 0;
  const ackFlushes = await walFlushesDuring(url, async (log) => {
    for (const m of messages) acked += await log.ack(m.recipientUser, m.recipientDevice, [m]);
  });
  expect(acked).toBe(N);
  // `accepted` means on disk: every append's commit flushed the WAL.
  expect(appendFlushes).toBeGreaterThanOrEqual(N);
  // An ack lost in a crash only brings the message again (clients dedupe): its commit does not flush.
  expect(ackFlushes).toBeLessThan(N / 3);
  // Committed all the same: what later reads see.
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [{ left }] = await sql<{ left: number }[]>`
      select count(*)::int as left from envelopes where state <> 'acked' or body is not null`;
    expect(left).toBe(0);
  } finally {
    await sql.end();
  }
}, 60_000);
