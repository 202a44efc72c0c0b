/**
 * Bench-only hook, preloaded (`bun --preload`) into the server processes the load harness spawns
 * (ClearBox nodes and the relay; `spawnProcess` in servers.ts), never part of `src/main.ts`: on
 * SIGUSR2 the process runs a full, synchronous garbage collection (`Bun.gc(true)`), another one
 * 250 ms later (PURGE_WAIT_MS), and prints one JSON line, `{"msg":"bench gc", ...}` (a
 * `HeapReading` of the second), which the harness waits for.
 *
 * Why a signal: only the harness's own user (or root) can send it, and only a process started with
 * this preload listens for it, so no client, token holder or network peer can make a node collect
 * (a full collection of a node holding 15,000 sockets stops its event loop for tens of ms). A
 * production node has no SIGUSR2 handler at all (the signal's default action, terminate, is
 * unchanged there).
 */
import { heapStats } from "bun:jsc";

/** What the hook prints after a collection: the JS heap's live size and objects, from `bun:jsc` `heapStats()`. */
export interface HeapReading {
  /** Bytes of live JS objects on the JSC heap after the collection. */
  heapBytes: number;
  /** Bytes the JSC heap has reserved (live objects plus free cells in its blocks). */
  heapCapacityBytes: number;
  /** Bytes outside the heap that JS objects reported owning (array buffers, strings' external buffers). */
  extraBytes: number;
  /** Live JS objects after the collection. */
  objects: number;
  /** Live objects by JSC type name (`Object`, `string`, `Promise`, `ServerWebSocket`...). */
  types: Record<string, number>;
  /** How long the collection took, in ms (the pause the hook caused; both collections' in its output line). */
  gcMs: number;
}

/** The `msg` of the hook's output line. */
export const GC_HOOK_MSG = "bench gc";

/** Collects fully and measures the heap (also usable in-process, e.g. by scripts/idle-heap.ts). */
export function collectAndMeasure(): HeapReading {
  const started = performance.now();
  Bun.gc(true);
  const gcMs = performance.now() - started;
  const s = heapStats();
  return {
    heapBytes: s.heapSize,
    heapCapacityBytes: s.heapCapacity,
    extraBytes: s.extraMemorySize,
    objects: s.objectCount,
    types: { ...s.objectTypeCounts },
    gcMs: Math.round(gcMs * 10) / 10,
  };
}

/**
 * Between the two collections of one request (ms). `Bun.gc` also has mimalloc collect, but mimalloc
 * (v3 in Bun 1.4) hands freed pages back to the OS only `purge_delay` (100 ms) after they were freed,
 * and only when it next runs: an idle server may never run it, and its RSS then keeps the pages
 * freed by the first collection. The second collection, after this wait, lets it purge them (not
 * shown to narrow the runs' spread: docs/BENCHMARKS.md, "Idle connections after a full collection").
 */
const PURGE_WAIT_MS = 250;

if (process.env.CLEARBOX_BENCH_GC_HOOK === "1") {
  process.on("SIGUSR2", () => {
    const first = collectAndMeasure();
    setTimeout(() => {
      const second = collectAndMeasure();
      console.log(
        JSON.stringify({
          msg: GC_HOOK_MSG,
          ...second,
          gcMs: Math.round((first.gcMs + second.gcMs) * 10) / 10,
        }),
      );
    }, PURGE_WAIT_MS);
  });
}
