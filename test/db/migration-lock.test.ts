import { afterEach, expect, test } from "bun:test";
import postgres from "postgres";
import { MIGRATION_LOCK_KEY, migratePostgresLocked, openDatabase } from "../../src/db/index.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";

// Issue 14 item 5: three nodes starting together on an empty database must all come up.

let testDb: TestDatabase | undefined;

afterEach(async () => {
  await testDb?.drop();
  testDb = undefined;
});

async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

test("three nodes migrating one empty database at once all come up, each migration applied once", async () => {
  testDb = await createTestDatabase();
  const url = testDb.url;
  const databases = await Promise.all([1, 2, 3].map(() => openDatabase({ databaseUrl: url, dataDir: null })));
  try {
    for (const database of databases) await database.ping();
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      const applied = await sql`select hash from drizzle.__drizzle_migrations`;
      const hashes = applied.map((row) => row.hash as string);
      expect(hashes.length).toBeGreaterThan(0);
      expect(new Set(hashes).size).toBe(hashes.length);
      const journal = (await Bun.file(`${import.meta.dir}/../../drizzle/meta/_journal.json`).json()) as {
        entries: unknown[];
      };
      expect(hashes.length).toBe(journal.entries.length);
    } finally {
      await sql.end();
    }
  } finally {
    for (const database of databases) await database.close();
  }
});

test("migrators wait for the advisory lock: nothing is created while another session holds it", async () => {
  testDb = await createTestDatabase();
  const url = testDb.url;
  const holder = postgres(url, { max: 1, onnotice: () => {} });
  const observer = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await holder`select pg_advisory_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`;
    let finished = 0;
    const migrations = [1, 2, 3].map(() => migratePostgresLocked(url).then(() => void finished++));
    const waiting = async () => {
      const [row] = await observer`
        select count(*)::int as n from pg_locks
        where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())`;
      return row?.n === 3;
    };
    await waitFor(waiting, "three migrators queued on the advisory lock");
    // All three are blocked on the lock: no migration ran, no table exists yet.
    const [tables] = await observer`
      select count(*)::int as n from information_schema.tables where table_schema in ('public', 'drizzle')`;
    expect(tables?.n).toBe(0);
    expect(finished).toBe(0);
    await holder`select pg_advisory_unlock(${MIGRATION_LOCK_KEY.toString()}::bigint)`;
    await Promise.all(migrations);
    expect(finished).toBe(3);
    const [accountsTable] = await observer`select to_regclass('public.accounts') is not null as present`;
    expect(accountsTable?.present).toBe(true);
    // Every migrator released the lock: it can be taken again at once.
    const [free] =
      await observer`select pg_try_advisory_lock(${MIGRATION_LOCK_KEY.toString()}::bigint) as got`;
    expect(free?.got).toBe(true);
  } finally {
    await holder.end();
    await observer.end();
  }
});
