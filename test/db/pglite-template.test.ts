import { afterEach, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { openDatabase, rowsOf } from "../../src/db/index.ts";
import { extractPgliteTemplate, PGLITE_TEMPLATE } from "../../src/db/pglite-template.ts";

// Issue 15 (start-up): a fresh embedded data directory is the template extracted natively and
// renamed into place, where PGlite's loadDataDir wrote it file by file through Emscripten.

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function scratch(): string {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-template-"));
  dirs.push(dir);
  return dir;
}

/** Every regular file of the template, by its path in the data directory. */
async function templateFiles(): Promise<Map<string, Uint8Array>> {
  const files = await new Bun.Archive(await Bun.file(PGLITE_TEMPLATE).bytes()).files();
  const byPath = new Map<string, Uint8Array>();
  for (const [path, file] of files) byPath.set(path.replace(/^\.?\/+/, ""), await file.bytes());
  return byPath;
}

/** Every regular file under `dir`, as paths relative to it. */
function filesUnder(dir: string, prefix = ""): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((entry) => {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? filesUnder(dir, path) : [path];
  });
}

async function userTables(dataDir: string): Promise<string[]> {
  const database = await openDatabase({ dataDir });
  try {
    const rows = rowsOf<{ tablename: string }>(
      await database.db.execute(sql`select tablename from pg_tables where schemaname = 'public' order by 1`),
    );
    return rows.map((r) => r.tablename);
  } finally {
    await database.close();
  }
}

test("a fresh data directory holds exactly the template's files, byte for byte", async () => {
  const dir = join(scratch(), "pglite");
  expect(await extractPgliteTemplate(dir)).toBe(true);
  const expected = await templateFiles();
  expect(filesUnder(dir).sort()).toEqual([...expected.keys()].sort());
  for (const [path, bytes] of expected) {
    expect(Buffer.from(readFileSync(join(dir, path))).equals(Buffer.from(bytes))).toBe(true);
  }
  expect(existsSync(`${dir}.partial`)).toBe(false);
  await expect(extractPgliteTemplate(dir)).rejects.toThrow("already holds a database");
});

test("the template is a cleanly shut down cluster, so a fresh node opens it without crash recovery", async () => {
  const control = (await templateFiles()).get("global/pg_control");
  if (!control) throw new Error("the template has no global/pg_control");
  // ControlFileData (PostgreSQL src/include/catalog/pg_control.h): system_identifier (8 bytes),
  // pg_control_version (4), catalog_version_no (4), then state, a DBState: 1 = DB_SHUTDOWNED,
  // 6 = DB_IN_PRODUCTION (a copy of a running cluster, replayed from its last checkpoint on open).
  const state = new DataView(control.buffer, control.byteOffset, control.byteLength).getInt32(16, true);
  expect(state).toBe(1);
});

test("an extraction a crash interrupted is discarded: the next start opens a whole database", async () => {
  const dataDir = scratch();
  // What a start killed mid-extraction leaves: the staging directory, partly written, and no pglite/.
  const partial = join(dataDir, "pglite.partial");
  mkdirSync(join(partial, "base"), { recursive: true });
  writeFileSync(join(partial, "PG_VERSION"), "18\n");
  writeFileSync(join(partial, "base", "stray"), "half written");
  expect(await userTables(dataDir)).toContain("accounts");
  expect(existsSync(partial)).toBe(false);
  expect(existsSync(join(dataDir, "pglite", "base", "stray"))).toBe(false);
  expect(existsSync(join(dataDir, "pglite", "global", "pg_control"))).toBe(true);
});

test("a pglite directory holding files but no database is written over, as loadDataDir did", async () => {
  const dataDir = scratch();
  mkdirSync(join(dataDir, "pglite", "base"), { recursive: true });
  writeFileSync(join(dataDir, "pglite", "stray"), "left by an earlier start");
  expect(await userTables(dataDir)).toContain("accounts");
});

test("an extraction over files that stop it midway never leaves PG_VERSION without the rest: the directory is whole", async () => {
  // The template's fourth entry is PG_VERSION and its fifth global/: written in place, a regular
  // file named global (left by an earlier start) failed the extraction after the marker was
  // written, and the next start took the directory for a database without global/pg_control.
  const dataDir = scratch();
  const dir = join(dataDir, "pglite");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "global"), "a file where the template has a directory");
  await extractPgliteTemplate(dir).catch(() => undefined);
  if (existsSync(join(dir, "PG_VERSION"))) {
    expect(existsSync(join(dir, "global", "pg_control"))).toBe(true);
    expect(filesUnder(dir).sort()).toEqual([...(await templateFiles()).keys()].sort());
  }
  expect(existsSync(`${dir}.partial`)).toBe(false);
  expect(await userTables(dataDir)).toContain("accounts");
});

/**
 * In a private mount namespace (unshare: no privilege needed, nothing mounted outside it, gone when
 * it exits), `dataDir/pglite` is made the mount point of a fresh tmpfs, holding `lost+found` as a
 * new ext4 volume does or nothing, and a child opens the data directory there. Returns what the
 * child saw (the mount is gone once it exits).
 */
async function openOnOwnVolume(dataDir: string, stray: string | null) {
  const mountPoint = join(dataDir, "pglite");
  mkdirSync(mountPoint);
  const child = `
    const { existsSync, readdirSync, statSync } = require("node:fs");
    const { join } = require("node:path");
    const { sql } = require("drizzle-orm");
    const { openDatabase, rowsOf } = require(${JSON.stringify(join(import.meta.dir, "../../src/db/index.ts"))});
    const [dataDir] = process.argv.slice(-1);
    const dir = join(dataDir, "pglite");
    const ownVolume = statSync(dir).dev !== statSync(dataDir).dev;
    let result;
    try {
      const database = await openDatabase({ dataDir });
      const rows = rowsOf(await database.db.execute(sql\`select tablename from pg_tables where schemaname = 'public'\`));
      await database.close();
      result = { ownVolume, tables: rows.map((r) => r.tablename), pgControl: existsSync(join(dir, "global", "pg_control")), entries: readdirSync(dir), sibling: existsSync(dir + ".partial") };
    } catch (error) {
      result = { ownVolume, failed: String(error?.message ?? error) };
    }
    console.log(JSON.stringify(result));
  `;
  const script = [
    `mount -t tmpfs tmpfs "$1"`,
    stray ? `mkdir "$1/${stray}"` : "true",
    `exec "${process.execPath}" -e "$2" "$3"`,
  ].join(" && ");
  const proc = Bun.spawn(
    ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", mountPoint, child, dataDir],
    { stdout: "pipe", stderr: "pipe", cwd: join(import.meta.dir, "../..") },
  );
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  const line = out.trim().split("\n").at(-1);
  if (!line?.startsWith("{")) throw new Error(`the child answered nothing: ${err.slice(-2000)}`);
  return JSON.parse(line) as {
    ownVolume: boolean;
    failed?: string;
    tables?: string[];
    pgControl?: boolean;
    entries?: string[];
    sibling?: boolean;
  };
}

test("a pglite directory that is its own volume's mount point, holding lost+found or nothing, is filled in place and opens", async () => {
  // An operator gives the database a volume of its own, mounted at DATA_DIR/pglite. A rename from
  // DATA_DIR/pglite.partial into it failed with EXDEV (lost+found made it "occupied"), and rmdir of
  // the empty mount point with EBUSY: the node could not start on it at all.
  for (const stray of ["lost+found", null]) {
    const seen = await openOnOwnVolume(scratch(), stray);
    expect(seen.ownVolume).toBe(true);
    expect(seen.failed).toBeUndefined();
    expect(seen.tables).toContain("accounts");
    expect(seen.pgControl).toBe(true);
    expect(seen.entries?.filter((entry) => entry.endsWith(".partial"))).toEqual([]);
    expect(seen.sibling).toBe(false);
  }
}, 60_000);
