import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { type SQL, sql } from "drizzle-orm";
import { type PgDatabase, PgDialect, type PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import { stageTraceOn, traceBlocking } from "../observability/stage-trace.ts";
import { type PglitePreparation, preparePglite } from "./pglite-prepare.ts";
import { usablePgliteTemplate } from "./pglite-template.ts";
import * as schema from "./schema.ts";
import { pgStatActivityProbe, stallWatchedSocket } from "./stall-watch.ts";

export { schema };

/** The drizzle handle every store uses; the same type whether PostgreSQL or PGlite is underneath. */
export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;

/** A transaction handle of `Db.transaction`. */
export type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

/** Rows of `db.execute(sql…)`: postgres-js returns an array, PGlite an object with `rows`. */
export function rowsOf<T>(result: unknown): T[] {
  return ((result as { rows?: T[] }).rows ?? (result as T[])) as T[];
}

/** Builds a statement's text and parameters from drizzle's `sql` (the same dialect `db.execute` uses). */
const dialect = new PgDialect();

/**
 * `db.execute(query)` as a prepared statement: resolves with what `db.execute` would (rows of it
 * through `rowsOf`), and rejects with the database's error as it would. drizzle's `db.execute` and
 * query builders hand postgres.js `prepare: false` unless given a name (drizzle-orm#6096), and an
 * unprepared statement with parameters costs two round trips on postgres.js: Parse and Describe to
 * learn the parameters' types, then Bind and Execute (its "describe first"); prepared, postgres.js
 * keeps the statement per connection, keyed by its text and parameter types, and every later run
 * is one Bind and Execute, one write and one round trip, with no parse. For hot statements of
 * fixed text only: every distinct text stays prepared on each pooled connection until it closes
 * (a reconnect prepares it again). A statement a migration invalidated while the node ran ("cached
 * plan must not change result type") is prepared again and run once more by postgres.js itself.
 * `name` is drizzle's switch to prepare (postgres.js names statements itself; PGlite ignores it).
 */
export function executePrepared(db: Db, name: string, query: SQL): Promise<unknown> {
  return db._.session.prepareQuery(dialect.sqlToQuery(query), undefined, name, false).execute();
}

/** An open database with its migrations applied. */
export interface Database {
  db: Db;
  kind: "postgres" | "pglite";
  /** Resolves when the database answers a trivial query. */
  ping(): Promise<void>;
  /**
   * PGlite only: a consistent gzipped tar of the data directory (`PGlite.dumpDataDir`, taken
   * between queries), which `PGlite.create({ loadDataDir })` loads back. PostgreSQL is backed up
   * with pg_dump instead.
   */
  dumpDataDir?(): Promise<Blob>;
  close(): Promise<void>;
}

/**
 * How the PostgreSQL pool (postgres.js) rides out a database restart. postgres.js counts failed
 * connection attempts once for the whole pool and waits `backoff(retries)` seconds before the next:
 * its default, `3^retries / 100` up to 20 s, reaches the 20 s cap after seven failures, which ten
 * connections refused during a 5 s restart make in well under a second, so queries kept waiting
 * (and timing out) for up to 20 s after the database was back. Here the wait doubles from 50 ms up
 * to 1 s (half to full, jittered), so the pool is back within about a second of the database.
 * `connect_timeout` bounds a connection attempt to an address that does not answer (a dropped SYN)
 * to 5 s instead of 30; `idle_timeout` closes connections idle for a minute, so one broken while
 * unused is not the first a burst of queries finds. Options: postgres.js README, "Connection details".
 */
export const POOL_RECOVERY = {
  backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1) * (0.5 + Math.random() / 2),
  connect_timeout: 5,
  idle_timeout: 60,
} as const;

/**
 * PGlite's `shared_buffers` (PostgreSQL's buffer cache, in PGlite's WebAssembly memory). PGlite
 * starts with PostgreSQL's default, 128MB, and touches all of it at start-up, so it was 128 MB of
 * the embedded node's resident memory before the first query, and it grew PGlite's WebAssembly
 * memory from its initial 128 MiB to 188.6 MiB (a Memory never shrinks). Measured (docs/BENCHMARKS.md,
 * "Embedded memory under load"): resident WebAssembly memory 152 MB at 128MB, 30 MB at 16MB, with
 * the memory staying at its initial 128 MiB. The embedded database holds accounts, devices, keys,
 * sessions, groups and the audit trail (envelopes are in the SQLite log), a few MB to tens of MB;
 * a page not in the cache is read from the data directory through the operating system's page cache.
 * PostgreSQL manual, "Resource Consumption" (`shared_buffers`).
 */
export const PGLITE_SHARED_BUFFERS = "16MB";

/** DATABASE_STALL_TIMEOUT_SECONDS' default, in ms (src/config/index.ts). */
export const DEFAULT_STALL_MS = 60_000;

/** The PostgreSQL/PGlite migrations generated by drizzle-kit. */
export const MIGRATIONS = resolve(import.meta.dir, "../../drizzle");

/**
 * The PostgreSQL advisory lock key (a bigint in the database-wide advisory key space) that
 * serialises migrations across nodes: each node takes it on one dedicated connection before
 * applying the migrations and releases it after, so nodes starting together on an empty database
 * apply each migration once instead of racing on `CREATE TABLE`. The value is arbitrary, fixed:
 * the ASCII bytes of "CBmigrat" read as a big-endian 64-bit integer.
 * Source: PostgreSQL manual, "Advisory Lock Functions" (`pg_advisory_lock(bigint)`).
 */
export const MIGRATION_LOCK_KEY = 0x43426d6967726174n;

/**
 * The PostgreSQL driver (postgres.js) and its drizzle adapter and migrator, imported when a
 * PostgreSQL is opened: the embedded default never loads them (docs/BENCHMARKS.md, "Start-up, stop 25").
 */
async function postgresDriver() {
  const [{ default: postgres }, { drizzle }, { migrate }] = await Promise.all([
    import("postgres"),
    import("drizzle-orm/postgres-js"),
    import("drizzle-orm/postgres-js/migrator"),
  ]);
  return { postgres, drizzle, migrate };
}

/**
 * Applies the drizzle migrations to the PostgreSQL at `url` while holding {@link MIGRATION_LOCK_KEY}
 * on a single dedicated connection (session-level lock, released on unlock or when the connection
 * ends, so a node that dies mid-migration never leaves it held). Waits for as long as another node
 * holds the lock. Rejects with the driver's error when the database cannot be reached or a migration fails.
 */
export async function migratePostgresLocked(url: string): Promise<void> {
  const { postgres, drizzle: drizzlePostgres, migrate: migratePostgres } = await postgresDriver();
  // max 1: the lock, every migration statement and the unlock run on the same session.
  const client = postgres(url, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: "clearbox-migrate" },
  });
  try {
    await client`select pg_advisory_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`;
    try {
      await migratePostgres(drizzlePostgres(client), { migrationsFolder: MIGRATIONS });
    } finally {
      await client`select pg_advisory_unlock(${MIGRATION_LOCK_KEY.toString()}::bigint)`.catch(() => {});
    }
  } finally {
    await client.end({ timeout: 5 });
  }
}

/**
 * Opens PostgreSQL when a URL is given, else the embedded PGlite in `dataDir/pglite`
 * (or in memory for `dataDir: null`; a fresh one starts from src/db/pglite-template.tar.gz when it
 * matches the installed PGlite, see src/db/pglite-prepare.ts), and applies the drizzle migrations (on PostgreSQL under
 * {@link MIGRATION_LOCK_KEY}, so several nodes may start together).
 */
export async function openDatabase(options: {
  databaseUrl?: string;
  dataDir: string | null;
  /** Connections in the PostgreSQL pool. */
  poolSize?: number;
  /**
   * PostgreSQL only: how long (ms) a connection may send nothing while a query waits before the
   * watch asks `pg_stat_activity` whether its backend is active: if not (or no answer within as
   * long) it is dropped and its queries fail with `DatabaseStalledError`, if so it is asked again
   * after as long (src/db/stall-watch.ts); default {@link DEFAULT_STALL_MS}.
   */
  stallMs?: number;
  /** PGlite only: its preparation for `dataDir`, begun earlier (src/main.ts); default begins it here. */
  pglite?: PglitePreparation;
}): Promise<Database> {
  if (options.databaseUrl) {
    const { postgres, drizzle: drizzlePostgres } = await postgresDriver();
    // `socket` is a postgres.js option its type declarations (3.4.9) leave out (README, "Custom
    // socket"): passed as a variable, not a literal, so the compiler lets it through.
    const poolOptions = {
      max: options.poolSize ?? 10,
      onnotice: () => {},
      connection: { application_name: "clearbox" },
      ...POOL_RECOVERY,
      socket: stallWatchedSocket(
        options.stallMs ?? DEFAULT_STALL_MS,
        pgStatActivityProbe(options.databaseUrl),
      ),
    };
    const client = postgres(options.databaseUrl, poolOptions);
    const db = drizzlePostgres(client, { schema }) as unknown as Db;
    try {
      await migratePostgresLocked(options.databaseUrl);
    } catch (error) {
      await client.end({ timeout: 1 }).catch(() => {});
      throw error;
    }
    return {
      db,
      kind: "postgres",
      ping: async () => void (await db.execute(sql`select 1`)),
      close: () => client.end({ timeout: 5 }),
    };
  }
  // A fresh directory (or memory) starts from the pre-initialised template instead of running initdb:
  // on disk extracted before PGlite opens it (preparePglite), in memory loaded by PGlite.
  if (options.dataDir !== null) mkdirSync(options.dataDir, { recursive: true });
  const preparation = options.pglite ?? preparePglite(options.dataDir);
  const dir = options.dataDir === null ? undefined : join(options.dataDir, "pglite");
  const template = dir === undefined ? usablePgliteTemplate() : undefined;
  await preparation.dataDir;
  const client = await PGlite.create(dir, {
    ...(template ? { loadDataDir: template } : {}),
    pgliteWasmModule: await preparation.wasmModule,
    // On the command line, not in postgresql.conf: nothing is written to the data directory.
    startParams: [...PGlite.defaultStartParams, "-c", `shared_buffers=${PGLITE_SHARED_BUFFERS}`],
  });
  if (stageTraceOn) traceBlocking(client, "execProtocolRawSync", "pglite");
  const pg = drizzlePglite(client, { schema });
  await migratePglite(pg, { migrationsFolder: MIGRATIONS });
  const db = pg as unknown as Db;
  return {
    db,
    kind: "pglite",
    ping: async () => void (await db.execute(sql`select 1`)),
    dumpDataDir: async () => {
      // Flush everything to the data files first, so the copy needs no WAL replay to be complete.
      await client.exec("checkpoint");
      return client.dumpDataDir("gzip");
    },
    close: () => client.close(),
  };
}
