/**
 * `npm run db:template`: rebuilds src/db/pglite-template.tar.gz (an initialised, migrated PGlite
 * data directory) and its version file. Run after upgrading PGlite, or to fold new migrations in.
 * The database is closed before it is archived, so the template is a cleanly shut down cluster:
 * a fresh node opens it without crash recovery (a `dumpDataDir` of an open database made every
 * cold start replay about 1 MB of WAL and checkpoint, about 1 s at load 9; docs/BENCHMARKS.md
 * "Start-up, stop 25").
 * Needs `tar` on the PATH (GNU or BSD).
 */
import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { drizzle } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import { MIGRATIONS } from "./index.ts";
import { installedPgliteVersion, PGLITE_TEMPLATE, PGLITE_TEMPLATE_VERSION_FILE } from "./pglite-template.ts";

/** PostgreSQL's own modes for a data directory (initdb): 0700 directories, 0600 files; Emscripten wrote 0666. */
function makePrivate(path: string): void {
  const directory = statSync(path).isDirectory();
  chmodSync(path, directory ? 0o700 : 0o600);
  if (directory) for (const entry of readdirSync(path)) makePrivate(join(path, entry));
}

const scratch = mkdtempSync(join(tmpdir(), "clearbox-template-"));
try {
  const dataDir = join(scratch, "pgdata");
  const client = await PGlite.create(dataDir);
  await migrate(drizzle(client), { migrationsFolder: MIGRATIONS });
  // A clean shutdown: the shutdown checkpoint is the last WAL record.
  await client.close();
  makePrivate(dataDir);
  const tar = Bun.spawnSync(["tar", "-czf", PGLITE_TEMPLATE, "-C", dataDir, "."], { stderr: "pipe" });
  if (tar.exitCode !== 0) throw new Error(`tar failed: ${tar.stderr.toString()}`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
writeFileSync(
  PGLITE_TEMPLATE_VERSION_FILE,
  `${JSON.stringify({ pglite: installedPgliteVersion() }, null, 2)}\n`,
);
console.log(`wrote ${PGLITE_TEMPLATE} (${statSync(PGLITE_TEMPLATE).size} bytes)`);
