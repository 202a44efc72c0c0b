/**
 * Issue 15 (embedded memory): does a large WebAssembly memory (PGlite's) make the JS heap keep more
 * garbage? Allocates short-lived objects (400 rounds of 5,000 objects with a 200-character string,
 * only the last round kept alive) beside an untouched WebAssembly.Memory of `<MiB>` and prints one
 * JSON line with the highest RSS seen (MB) and JSC's extra memory. `worker` puts the memory in a
 * Worker (its own heap) instead of this thread.
 *
 *   bun run scripts/wasm-gc-pressure.ts <MiB> [main|worker]
 */
import { heapStats } from "bun:jsc";

declare const self: Worker | undefined;

const isWorker = typeof Bun !== "undefined" && !Bun.isMainThread;
if (isWorker) {
  const mib = Number(process.env.WASM_GC_PRESSURE_MIB ?? 0);
  const memory = new WebAssembly.Memory({ initial: (mib * 2 ** 20) / 65536, maximum: 32768 });
  (self as Worker).postMessage(memory.buffer.byteLength);
  setInterval(() => memory.buffer.byteLength, 60_000);
} else {
  const mib = Number(process.argv[2] ?? 0);
  const where = process.argv[3] === "worker" ? "worker" : "main";
  const held: unknown[] = [];
  let worker: Worker | undefined;
  if (mib > 0 && where === "main") {
    held.push(new WebAssembly.Memory({ initial: (mib * 2 ** 20) / 65536, maximum: 32768 }));
  } else if (mib > 0) {
    worker = new Worker(import.meta.path, { env: { ...process.env, WASM_GC_PRESSURE_MIB: String(mib) } });
    await new Promise((resolve) => {
      (worker as Worker).onmessage = resolve;
    });
  }
  let peak = 0;
  let kept: unknown[] = [];
  for (let round = 0; round < 400; round++) {
    const batch: unknown[] = [];
    for (let i = 0; i < 5000; i++) {
      batch.push({ id: `${round}-${i}-${Math.random()}`, body: "x".repeat(200), n: [i, i + 1] });
    }
    kept = batch;
    if (round % 10 === 0) {
      peak = Math.max(peak, process.memoryUsage().rss);
      await Bun.sleep(1);
    }
  }
  console.log(
    JSON.stringify({
      wasmMiB: mib,
      where,
      peakRssMB: Math.round(peak / 2 ** 20),
      jscExtraMemoryMB: Math.round(heapStats().extraMemorySize / 2 ** 20),
      kept: kept.length + held.length,
    }),
  );
  worker?.terminate();
}
