/**
 * Issue 15 (embedded memory): what PGlite's `shared_buffers` costs. Opens a fresh PGlite from the
 * committed template in a temporary directory with the given `shared_buffers` (default: PGlite's
 * own, 128MB), applies the migrations, and prints one JSON line: the setting in force, the size of
 * PGlite's WebAssembly memory (MiB), how much of it is resident (MB, from /proc/self/smaps: the
 * anonymous mapping of that size), the process RSS, and JSC's extra memory (ArrayBuffers and
 * WebAssembly memories the garbage collector counts) after a full collection.
 *
 *   bun run scripts/pglite-memory.ts [16MB]
 */
import { heapStats } from "bun:jsc";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { drizzle } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import { MIGRATIONS } from "../src/db/index.ts";
import { usablePgliteTemplate } from "../src/db/pglite-template.ts";

const MB = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

/** Resident bytes of the anonymous mapping(s) whose size is within 4 MiB of `bytes`. */
function residentOfMappingSized(bytes: number): number {
  let match = false;
  let rss = 0;
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const size = Number.parseInt(head[2] as string, 16) - Number.parseInt(head[1] as string, 16);
      match = !(head[3] ?? "").startsWith("/") && Math.abs(size - bytes) < 4 * 2 ** 20;
      continue;
    }
    const resident = /^Rss:\s+(\d+) kB/.exec(line);
    if (resident && match) rss += Number(resident[1]) * 1024;
  }
  return rss;
}

const sharedBuffers = process.argv[2];
const dir = mkdtempSync(join(tmpdir(), "clearbox-pglite-memory-"));
try {
  const client = await PGlite.create(dir, {
    loadDataDir: usablePgliteTemplate(),
    ...(sharedBuffers
      ? { startParams: [...PGlite.defaultStartParams, "-c", `shared_buffers=${sharedBuffers}`] }
      : {}),
  });
  await migrate(drizzle(client), { migrationsFolder: MIGRATIONS });
  const setting = (await client.query<{ shared_buffers: string }>("show shared_buffers")).rows[0];
  const wasm = client.Module.HEAPU8.buffer.byteLength;
  Bun.gc(true);
  console.log(
    JSON.stringify({
      shared_buffers: setting?.shared_buffers,
      wasmMemoryMiB: MB(wasm),
      wasmResidentMB: MB(residentOfMappingSized(wasm)),
      rssMB: MB(process.memoryUsage().rss),
      jscExtraMemoryMB: MB(heapStats().extraMemorySize),
    }),
  );
  await client.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
