import {
  closeSync,
  existsSync,
  fsyncSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { syncfs } from "../config/libc.ts";

/**
 * A pre-initialised PGlite data directory (initdb plus the migrations of its day, as a gzipped tar
 * from `dumpDataDir`), so a fresh embedded node skips initdb: it took 6–20 s on this 2-core machine
 * under load, loading the template ~2 s (docs/BENCHMARKS.md). Migrations added since are applied
 * after loading, as on any start. Rebuilt with `npm run db:template`; tied to the PGlite version it
 * was made with, since another build may not read its catalog.
 */
export const PGLITE_TEMPLATE = resolve(import.meta.dir, "pglite-template.tar.gz");
const TEMPLATE_VERSION = resolve(import.meta.dir, "pglite-template.json");

/** The installed @electric-sql/pglite version, from its package.json. */
export function installedPgliteVersion(): string {
  const entry = fileURLToPath(import.meta.resolve("@electric-sql/pglite"));
  let dir = dirname(entry);
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
  return (JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { version: string }).version;
}

/** The PGlite version the committed template was made with, or undefined without one. */
export function templateVersion(): string | undefined {
  if (!existsSync(TEMPLATE_VERSION) || !existsSync(PGLITE_TEMPLATE)) return undefined;
  return (JSON.parse(readFileSync(TEMPLATE_VERSION, "utf8")) as { pglite: string }).pglite;
}

/** The template as a Blob for `PGlite.create({ loadDataDir })`, when it matches the installed PGlite. */
export function usablePgliteTemplate(): Blob | undefined {
  if (templateVersion() !== installedPgliteVersion()) return undefined;
  return new Blob([readFileSync(PGLITE_TEMPLATE)]);
}

/** Whether `dir` holds a PostgreSQL data directory (PGlite's own test before it opens one). */
export function holdsPgliteDatabase(dir: string): boolean {
  return existsSync(join(dir, "PG_VERSION"));
}

/**
 * Writes the template into `dir` as a fresh PGlite data directory, with Bun's native tar reader
 * (`Bun.Archive`, mostly off the event loop) instead of PGlite's `loadDataDir`, which writes the
 * 41 MB file by file through Emscripten's file system on the event loop (4–12 s of a cold start at
 * load 5–13, docs/BENCHMARKS.md "Start-up, stop 25"). The files are the tar's, byte for byte; PGlite
 * then opens `dir` as an existing database.
 *
 * PG_VERSION is what marks `dir` a database (`holdsPgliteDatabase`, PGlite's own test), so it must
 * appear only once every other file is whole on disk: the template is extracted into a staging
 * directory (a leftover one is removed first), every file and directory of it is fsynced, and only
 * then is it moved into place and the parent directory fsynced. A start interrupted (killed, or the
 * machine lost power) before that leaves no PG_VERSION, and the next start extracts again.
 * When `dir` does not exist, the staging directory is `<dir>.partial`, renamed to `dir`. When it
 * does (empty, holding files but no PG_VERSION written by a start before this one, a link to a
 * directory, a mount point), `dir` itself is kept and the staging directory is
 * `<dir>/.clearbox-template.partial`, on the same file system as what `dir` holds (a rename from
 * `<dir>.partial` into a `dir` linked or mounted from another volume fails with EXDEV): each of the
 * template's top-level entries replaces the one of that name, PG_VERSION last, then `dir` is
 * fsynced; other entries are left.
 * Resolves false, writing nothing, when the template does not match the installed PGlite (the
 * caller lets PGlite run initdb instead). Rejects with the file system's error (disk full, no
 * permission) or when `dir` already holds a database.
 */
export async function extractPgliteTemplate(dir: string): Promise<boolean> {
  if (templateVersion() !== installedPgliteVersion()) return false;
  if (holdsPgliteDatabase(dir)) throw new Error(`${dir} already holds a database`);
  const archive = new Bun.Archive(await Bun.file(PGLITE_TEMPLATE).bytes());
  // An existing `dir` is kept and filled from inside: it may be a link to, or a mount point of,
  // another file system (an empty one cannot be removed, and no rename crosses into it).
  const inPlace = existsSync(dir);
  const staging = inPlace ? join(dir, IN_PLACE_STAGING) : `${dir}.partial`;
  rmSync(`${dir}.partial`, { recursive: true, force: true });
  rmSync(staging, { recursive: true, force: true });
  await archive.extract(staging);
  await syncTree(staging);
  if (inPlace) {
    const move = (entry: string) => {
      rmSync(join(dir, entry), { recursive: true, force: true });
      renameSync(join(staging, entry), join(dir, entry));
    };
    for (const entry of readdirSync(staging)) if (entry !== "PG_VERSION") move(entry);
    // Every other entry's rename is durable before the marker's is made.
    fsyncPath(dir);
    move("PG_VERSION");
    rmdirSync(staging);
    fsyncPath(dir);
  } else {
    renameSync(staging, dir);
  }
  fsyncPath(dirname(dir));
  return true;
}

/** Where the template is staged inside an existing data directory before its entries are moved up. */
const IN_PLACE_STAGING = ".clearbox-template.partial";

/** fsync(2) of one file or directory (a directory's fsync makes its entries' creation durable). */
function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Makes every file and directory under `root` durable: one syncfs(2) of its file system where libc
 * has it (Linux), else `fsyncTree`. The template is about a thousand files: an fsync each is a
 * journal commit each, and made a fresh data directory's first start about 0.4 s slower on this
 * project's machine (docs/BENCHMARKS.md); syncfs writes them out with one.
 */
async function syncTree(root: string): Promise<void> {
  if (syncfs) {
    const fd = openSync(root, "r");
    try {
      if (syncfs(fd) === 0) return;
    } finally {
      closeSync(fd);
    }
  }
  await fsyncTree(root);
}

/**
 * fsyncs every regular file under `root`, then every directory (deepest first, `root` last), 16 at
 * a time on libuv's thread pool rather than one by one on the event loop.
 */
async function fsyncTree(root: string): Promise<void> {
  const files: string[] = [];
  const dirs: string[] = [root];
  for (let i = 0; i < dirs.length; i++) {
    for (const entry of readdirSync(dirs[i], { withFileTypes: true })) {
      const path = join(dirs[i], entry.name);
      if (entry.isDirectory()) dirs.push(path);
      else if (entry.isFile()) files.push(path);
    }
  }
  const sync = async (path: string) => {
    const handle = await open(path, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  };
  const inParallel = async (paths: string[]) => {
    let next = 0;
    const worker = async () => {
      while (next < paths.length) await sync(paths[next++]);
    };
    await Promise.all(Array.from({ length: Math.min(16, paths.length) }, worker));
  };
  await inParallel(files);
  await inParallel(dirs.reverse());
}

/** Where `npm run db:template` writes the version the template was made with. */
export const PGLITE_TEMPLATE_VERSION_FILE = TEMPLATE_VERSION;
