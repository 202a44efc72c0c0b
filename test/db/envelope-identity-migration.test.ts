import { Database as Sqlite } from "bun:sqlite";
import { afterEach, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { drizzle as drizzleSqlite } from "drizzle-orm/bun-sqlite";
import { migrate as migrateSqlite } from "drizzle-orm/bun-sqlite/migrator";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import { migrate as migratePostgres } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { openDatabase } from "../../src/db/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";

// Migration 0011 (PostgreSQL) and drizzle-sqlite 0002 rebuild the envelope identity led by the
// recipient device and id and drop envelopes_recipient_id_idx. A log written before them must keep
// its guarantees after: a re-sent envelope is still a no-op, pending rows are read in order, acks
// find their rows.

const ROOT = resolve(import.meta.dir, "../..");
let testDb: TestDatabase | undefined;
const dirs: string[] = [];

afterEach(async () => {
  await testDb?.drop();
  testDb = undefined;
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A copy of a drizzle migrations folder holding only the migrations before `firstLeftOut`. */
function migrationsBefore(folder: string, firstLeftOut: string): string {
  const dir = mkdtempSync(join(tmpdir(), "cb-migrations-"));
  dirs.push(dir);
  cpSync(join(ROOT, folder), dir, { recursive: true });
  const journalPath = join(dir, "meta", "_journal.json");
  const journal = JSON.parse(readFileSync(journalPath, "utf8")) as {
    entries: { tag: string }[];
  };
  const cut = journal.entries.findIndex((e) => e.tag.startsWith(firstLeftOut));
  expect(cut).toBeGreaterThan(0);
  journal.entries = journal.entries.slice(0, cut);
  writeFileSync(journalPath, JSON.stringify(journal));
  return dir;
}

function envelopes(recipientUser: string, count: number): StoredEnvelope[] {
  const senderUser = randomUUID();
  return Array.from({ length: count }, (_, i) => ({
    id: randomUUID(),
    senderUser,
    senderDevice: 1,
    recipientUser,
    recipientDevice: 1 + (i % 2),
    groupId: null,
    ts: 1_700_000_000_000 + i,
    type: 1,
    body: Buffer.from(`ciphertext ${i}`).toString("base64"),
  }));
}

test("PostgreSQL: a log written before migration 0011 keeps dedupe, order and acks after it", async () => {
  testDb = await createTestDatabase();
  const old = postgres(testDb.url, { max: 1, onnotice: () => {} });
  const recipient = randomUUID();
  const written = envelopes(recipient, 6);
  try {
    await migratePostgres(drizzlePostgres(old), { migrationsFolder: migrationsBefore("drizzle", "0011") });
    const before = await old`select indexname from pg_indexes where tablename = 'envelopes'`;
    expect(before.map((r) => r.indexname)).toContain("envelopes_recipient_id_idx");
    // The rows as the log wrote them before: PostgresEnvelopeLog's statements name no index.
    const oldLog = new PostgresEnvelopeLog(drizzlePostgres(old) as never);
    expect(await oldLog.append(written)).toEqual(written.map(() => true));
    expect(await oldLog.ack(recipient, 1, [written[0] as StoredEnvelope])).toBe(1);
  } finally {
    await old.end();
  }

  const database = await openDatabase({ databaseUrl: testDb.url, dataDir: null });
  try {
    const log = new PostgresEnvelopeLog(database.db);
    // Re-sent, acked or not: no-ops.
    expect(await log.append(written)).toEqual(written.map(() => false));
    const device1 = written.filter((e) => e.recipientDevice === 1);
    expect((await log.undelivered(recipient, { device: 1 })).map((e) => e.id)).toEqual(
      device1.slice(1).map((e) => e.id),
    );
    expect(await log.ack(recipient, 1, [device1[1] as StoredEnvelope, device1[2] as StoredEnvelope])).toBe(2);
    expect(await log.undelivered(recipient, { device: 1 })).toEqual([]);
    // An ack sent again finds nothing left to ack; the other device's rows are untouched.
    expect(await log.ack(recipient, 1, [device1[1] as StoredEnvelope])).toBe(0);
    expect((await log.undelivered(recipient, { device: 2 })).length).toBe(3);

    const sql = postgres(testDb.url, { max: 1, onnotice: () => {} });
    try {
      const indexes = await sql`
        select indexname, indexdef from pg_indexes where tablename = 'envelopes' order by indexname`;
      expect(indexes.map((r) => r.indexname)).toEqual([
        "envelopes_recipient_idx",
        "envelopes_recipient_user_recipient_device_id_sender_user_sender",
        "envelopes_sender_idx",
        "envelopes_ts_idx",
      ]);
      const [pk] = await sql`
        select pg_get_indexdef(indexrelid) as def from pg_index
        where indrelid = 'envelopes'::regclass and indisprimary`;
      expect(pk?.def).toContain("(recipient_user, recipient_device, id, sender_user, sender_device)");
    } finally {
      await sql.end();
    }
  } finally {
    await database.close();
  }
});

test("SQLite: a log written before drizzle-sqlite 0002 keeps dedupe, order and acks after it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cb-sqlite-log-"));
  dirs.push(dir);
  const path = join(dir, "envelopes.db");
  const recipient = randomUUID();
  const written = envelopes(recipient, 6);
  const old = new Sqlite(path, { create: true, strict: true });
  try {
    migrateSqlite(drizzleSqlite({ client: old }), {
      migrationsFolder: migrationsBefore("drizzle-sqlite", "0002"),
    });
    const insert = old.prepare(
      `insert into envelopes (id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state)
       values (?, ?, ?, ?, ?, null, ?, ?, ?, 'pending')`,
    );
    for (const e of written) {
      insert.run(
        e.id,
        e.senderUser,
        e.senderDevice,
        e.recipientUser,
        e.recipientDevice,
        e.ts,
        e.type,
        Buffer.from(e.body, "base64"),
      );
    }
    const names = old
      .query<{ name: string }, []>("select name from sqlite_master where type = 'index'")
      .all();
    expect(names.map((r) => r.name)).toContain("envelopes_recipient_id_idx");
  } finally {
    old.close();
  }

  const log = await SqliteEnvelopeLog.open(path);
  try {
    expect(await log.append(written)).toEqual(written.map(() => false));
    const device1 = written.filter((e) => e.recipientDevice === 1);
    expect((await log.undelivered(recipient, { device: 1 })).map((e) => e.id)).toEqual(
      device1.map((e) => e.id),
    );
    expect(await log.ack(recipient, 1, device1)).toBe(device1.length);
    expect(await log.undelivered(recipient, { device: 1 })).toEqual([]);
    expect((await log.undelivered(recipient, { device: 2 })).length).toBe(3);
  } finally {
    await log.close();
  }
  const after = new Sqlite(path, { readonly: true });
  try {
    const indexes = after
      .query<{ name: string; sql: string }, []>(
        "select name, sql from sqlite_master where type = 'index' and tbl_name = 'envelopes' order by name",
      )
      .all();
    expect(indexes.map((r) => r.name)).toEqual([
      "envelopes_identity_idx",
      "envelopes_recipient_idx",
      "envelopes_sender_idx",
      "envelopes_ts_idx",
    ]);
    expect(indexes[0]?.sql).toContain(
      "(`recipient_user`,`recipient_device`,`id`,`sender_user`,`sender_device`)",
    );
  } finally {
    after.close();
  }
});
