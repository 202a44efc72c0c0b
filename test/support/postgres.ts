import { expect } from "bun:test";
import { randomBytes } from "node:crypto";
import { type SQL, sql } from "drizzle-orm";
import postgres from "postgres";
import { rowsOf } from "../../src/db/index.ts";

/** The server tests create their databases on; its own database is never written to. */
export const TEST_POSTGRES_URL =
  process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** A database of its own for one test file, created empty and dropped afterwards. */
export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

/** Creates `cb_test_<random>` on the test server so runs and files never see each other's rows. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `cb_test_${randomBytes(6).toString("hex")}`;
  const admin = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(TEST_POSTGRES_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const sql = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end();
      }
    },
  };
}

/** What `lockWaiters` queries: a node's drizzle database (`node.database.db`). */
interface Executes {
  execute(query: SQL): Promise<unknown>;
}

/**
 * How many statements of `db`'s database wait for a lock now (`pg_stat_activity`, wait event type
 * `Lock`): how a race test knows the operation it started has reached the lock the test holds.
 */
export async function lockWaiters(db: Executes): Promise<number> {
  const [row] = rowsOf<{ n: number }>(
    await db.execute(
      sql`select count(*)::int as n from pg_stat_activity
          where wait_event_type = 'Lock' and datname = current_database()`,
    ),
  );
  return row?.n ?? 0;
}

/**
 * Polls `lockWaiters(db)` every 25 ms until at least `n` statements wait (at most `tries` polls),
 * then asserts that they do, so a test never goes on before its racing operation is parked.
 */
export async function untilLockWaiters(db: Executes, n = 1, tries = 400): Promise<void> {
  for (let i = 0; i < tries && (await lockWaiters(db)) < n; i++) await Bun.sleep(25);
  expect(await lockWaiters(db)).toBeGreaterThanOrEqual(n);
}
