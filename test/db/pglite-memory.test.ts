import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { type Database, openDatabase, PGLITE_SHARED_BUFFERS, rowsOf } from "../../src/db/index.ts";

// Issue 15 (embedded memory): PGlite's PostgreSQL started with the default 128MB shared_buffers,
// which it touches at start-up: 128 MB of the node's resident memory, and a WebAssembly memory
// grown from 128 MiB to 188.6 MiB that never shrinks. The embedded database runs with a small one.

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** PGlite's WebAssembly memory (its Emscripten heap), in bytes. */
function wasmBytes(database: Database): number {
  const client = (database.db as unknown as { $client: PGlite }).$client;
  return client.Module.HEAPU8.buffer.byteLength;
}

async function sharedBuffers(database: Database): Promise<string> {
  const rows = rowsOf<{ shared_buffers: string }>(await database.db.execute(sql`show shared_buffers`));
  return rows[0]?.shared_buffers ?? "";
}

test("the embedded database runs with the small shared_buffers, on a fresh data directory and after a restart", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "clearbox-pglite-mem-"));
  dirs.push(dataDir);
  const first = await openDatabase({ dataDir });
  try {
    expect(await sharedBuffers(first)).toBe(PGLITE_SHARED_BUFFERS);
  } finally {
    await first.close();
  }
  const again = await openDatabase({ dataDir });
  try {
    expect(await sharedBuffers(again)).toBe(PGLITE_SHARED_BUFFERS);
  } finally {
    await again.close();
  }
});

test("PGlite's WebAssembly memory stays at its initial 128 MiB through start-up and migrations", async () => {
  const database = await openDatabase({ dataDir: null });
  try {
    // With 128MB of shared buffers it had grown to 188.6 MiB by now.
    expect(wasmBytes(database)).toBeLessThanOrEqual(128 * 1024 * 1024);
  } finally {
    await database.close();
  }
});
