/**
 * Diagnosis of issue 15 (embedded memory): runs one ClearBox node in this process, as `src/main.ts`
 * would (same environment variables), plus a side HTTP listener on 127.0.0.1:MEM_PROBE_PORT:
 * - `GET /mem` (`?gc=1` runs `Bun.gc(true)` first): one JSON reading, sizes in MB: `rss` and the
 *   JS heap (`process.memoryUsage`, `bun:jsc` `heapStats`: `jscHeapSize` includes
 *   `jscExtraMemory`, the ArrayBuffers and WebAssembly memories the collector counts), PGlite's
 *   WebAssembly memory size (`pgliteWasm`) and resident part (`pgliteWasmRss`), and the rest of
 *   /proc/self/smaps by kind: `bigAnonRss` (anonymous mappings of 64 MiB or more: the JS heap's and
 *   the allocators' regions), `anonRss` (smaller ones), `jitRss`, `fileRss` (the binary, libraries,
 *   SQLite's mapped -shm file);
 * - `GET /mem?types=1`: the 40 commonest object types on the JS heap;
 * - `GET /mem?pg=1`: PGlite's memory settings, `pg_stat_database` and the busiest tables.
 * It logs a `/mem` reading to stdout every MEM_PROBE_EVERY_MS (default 2000). Drive it with
 * `npm run loadtest -- one-to-one --url http://127.0.0.1:$PORT ...` (docs/BENCHMARKS.md,
 * "Embedded memory under load").
 */

import { heapStats } from "bun:jsc";
import { readFileSync } from "node:fs";
import { loadConfig } from "../src/config/index.ts";
import { createNode } from "../src/node.ts";

const config = loadConfig();
const node = await createNode(config, { processMetrics: true });
const client = (
  node.database.db as unknown as {
    $client?: {
      Module?: { HEAPU8?: Uint8Array };
      query(sql: string): Promise<{ rows: unknown[] }>;
    };
  }
).$client;

const MB = (n: number) => Math.round((n / 1048576) * 10) / 10;

/** Sums /proc/self/smaps by kind of mapping: the big reservations (WebAssembly memories), files, anonymous. */
function smaps(wasmBytes: number | undefined) {
  const text = readFileSync("/proc/self/smaps", "utf8");
  const out = {
    pgliteWasmRss: 0,
    jitRss: 0,
    bigAnonRss: 0,
    wasmReservedRss: 0,
    wasmRegions: 0,
    anonRss: 0,
    fileRss: 0,
    heapRss: 0,
    stackRss: 0,
  };
  let size = 0;
  let kind = "";
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      size = Number.parseInt(head[2] as string, 16) - Number.parseInt(head[1] as string, 16);
      const name = head[3] ?? "";
      const perms = line.split(" ")[1] ?? "";
      kind = name.startsWith("/")
        ? "file"
        : name === "[heap]"
          ? "heap"
          : name.startsWith("[stack")
            ? "stack"
            : wasmBytes !== undefined && Math.abs(size - wasmBytes) < 4 * 1024 ** 2
              ? "pglite"
              : perms.startsWith("rwx")
                ? "jit"
                : size >= 4 * 1024 ** 3
                  ? "wasm"
                  : size >= 64 * 1024 ** 2
                    ? "big"
                    : "anon";
      if (kind === "wasm") out.wasmRegions++;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      const bytes = Number(rss[1]) * 1024;
      if (kind === "pglite") out.pgliteWasmRss += bytes;
      else if (kind === "jit") out.jitRss += bytes;
      else if (kind === "big") out.bigAnonRss += bytes;
      else if (kind === "wasm") out.wasmReservedRss += bytes;
      else if (kind === "file") out.fileRss += bytes;
      else if (kind === "heap") out.heapRss += bytes;
      else if (kind === "stack") out.stackRss += bytes;
      else out.anonRss += bytes;
    }
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, k === "wasmRegions" ? v : MB(v)]));
}

function reading() {
  const m = process.memoryUsage();
  const h = heapStats();
  const wasm = client?.Module?.HEAPU8?.buffer.byteLength;
  return {
    t: new Date().toISOString(),
    rss: MB(m.rss),
    heapUsed: MB(m.heapUsed),
    heapTotal: MB(m.heapTotal),
    external: MB(m.external),
    jscHeapSize: MB(h.heapSize),
    jscHeapCapacity: MB(h.heapCapacity),
    jscExtraMemory: MB(h.extraMemorySize),
    objects: h.objectCount,
    pgliteWasm: wasm === undefined ? null : MB(wasm),
    ...smaps(wasm),
  };
}

Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.MEM_PROBE_PORT ?? 0),
  async fetch(req) {
    const url = new URL(req.url);
    if (url.searchParams.get("pg") === "1" && client) {
      const settings = await client.query(
        "select name, setting, unit from pg_settings where name in ('shared_buffers','work_mem','temp_buffers','maintenance_work_mem','wal_buffers')",
      );
      const db = await client.query(
        "select xact_commit, xact_rollback, blks_read, blks_hit, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted from pg_stat_database where datname = current_database()",
      );
      const tables = await client.query(
        "select relname, seq_scan, idx_scan, n_tup_ins, n_tup_upd, n_tup_del, n_live_tup from pg_stat_user_tables order by coalesce(seq_scan,0)+coalesce(idx_scan,0) desc limit 15",
      );
      const size = await client.query("select pg_database_size(current_database()) as bytes");
      return Response.json({ settings: settings.rows, db: db.rows, tables: tables.rows, size: size.rows });
    }
    if (url.searchParams.get("gc") === "1") Bun.gc(true);
    if (url.searchParams.get("types") === "1") {
      const types = Object.entries(heapStats().objectTypeCounts)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 40);
      return Response.json(types);
    }
    return Response.json(reading());
  },
});
setInterval(
  () => console.log(JSON.stringify({ msg: "mem", ...reading() })),
  Number(process.env.MEM_PROBE_EVERY_MS ?? 2000),
);
console.log(JSON.stringify({ msg: "mem-probe ready", url: node.url, adminUrl: node.adminUrl }));
