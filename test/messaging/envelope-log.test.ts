import { Database as SqliteDatabase } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { type Database, openDatabase, rowsOf } from "../../src/db/index.ts";
import { MongoEnvelopeLog } from "../../src/messaging/mongo-envelope-log.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { createTestDatabase } from "../support/postgres.ts";
import { describeEnvelopeLog } from "./envelope-log.conformance.ts";

/** Group messages a PostgreSQL/PGlite log holds unexpanded, read beside the log. */
async function unexpandedRows(db: Database["db"]): Promise<number> {
  const result = await db.execute(
    sql`select count(*)::int as n from group_messages where recipients is not null`,
  );
  return Number(rowsOf<{ n: number }>(result)[0]?.n ?? 0);
}

describeEnvelopeLog("PGlite", async (options) => {
  const database = await openDatabase({ dataDir: null });
  return {
    log: new PostgresEnvelopeLog(database.db, undefined, options),
    dispose: () => database.close(),
    unexpanded: () => unexpandedRows(database.db),
  };
});

describeEnvelopeLog("PostgreSQL", async (options) => {
  const testDb = await createTestDatabase();
  const database = await openDatabase({ databaseUrl: testDb.url, dataDir: null });
  return {
    log: new PostgresEnvelopeLog(database.db, undefined, options),
    dispose: async () => {
      await database.close();
      await testDb.drop();
    },
    unexpanded: () => unexpandedRows(database.db),
  };
});

// No MongoDB server can run on our machines: this suite runs wherever MONGODB_URL points at one.
const mongoUrl = process.env.MONGODB_URL;
if (mongoUrl) {
  describeEnvelopeLog(
    "MongoDB",
    async () => {
      const database = `clearbox_test_${randomBytes(6).toString("hex")}`;
      const log = await MongoEnvelopeLog.open(mongoUrl, { retentionDays: 30, database });
      return {
        log,
        dispose: async () => {
          const { MongoClient } = await import("mongodb");
          const client = await MongoClient.connect(mongoUrl);
          await client.db(database).dropDatabase();
          await client.close();
          await log.close();
        },
      };
    },
    { expandsAtOnce: true },
  );
}

describeEnvelopeLog("SQLite (embedded)", async (options) => {
  const log = await SqliteEnvelopeLog.open(null, undefined, options);
  return {
    log,
    dispose: () => log.close(),
    unexpanded: async () => {
      const file = new SqliteDatabase(log.path, { readonly: true });
      try {
        const row = file.query("select count(*) as n from group_messages where recipients is not null").get();
        return (row as { n: number }).n;
      } finally {
        file.close();
      }
    },
  };
});

// Two nodes on one PostgreSQL: each log has its own pool and its own group commits for appends,
// expansions, acks and `queued` marks, so the three writes of a group message's row race for real.
describe("group messages on PostgreSQL, written from two nodes at once", () => {
  test("acks and queued marks racing the background expansion never move a row back (20 messages × 40 devices)", async () => {
    const testDb = await createTestDatabase();
    const first = await openDatabase({ databaseUrl: testDb.url, dataDir: null });
    const second = await openDatabase({ databaseUrl: testDb.url, dataDir: null });
    try {
      const sender = new PostgresEnvelopeLog(first.db);
      const other = new PostgresEnvelopeLog(second.db);
      const users = Array.from({ length: 40 }, () => randomUUID());
      const recipients = Object.fromEntries(users.map((u) => [u, [1]]));
      const groupId = randomUUID();
      const ids: string[] = [];
      const writes: Promise<unknown>[] = [];
      for (let n = 0; n < 20; n++) {
        const id = randomUUID();
        ids.push(id);
        const message = {
          id,
          senderUser: randomUUID(),
          senderDevice: 1,
          groupId,
          ts: Date.now(),
          type: 7,
          body: Buffer.from(`#${n}`).toString("base64"),
        };
        expect(await sender.appendGroup(message, recipients)).toBe(true);
        // Users 0-9 ack on the sender's node, 10-19 ack on the other, 20-29 are flushed to their
        // queue on the other and then ack there, 30-39 do nothing: all while the expansion runs.
        for (const [i, user] of users.entries()) {
          if (i < 10) writes.push(sender.ack(user, 1, [message]));
          else if (i < 20) writes.push(other.ack(user, 1, [message]));
          else if (i < 30) {
            writes.push(other.markQueued(user, 1, [message]).then(() => other.ack(user, 1, [message])));
          }
        }
      }
      await Promise.all(writes);
      for (const [i, user] of users.entries()) {
        const left = await other.undelivered(user);
        if (i < 30) expect(left).toEqual([]);
        else expect(left.map((e) => e.id)).toEqual(ids);
        const states = (await sender.metadataOf(user)).map((m) => m.state);
        expect(states).toEqual(ids.map(() => (i < 30 ? "acked" : "pending")));
      }
      expect(await other.expandStale(0)).toEqual([]);
    } finally {
      await first.close();
      await second.close();
      await testDb.drop();
    }
  }, 60_000);
});
