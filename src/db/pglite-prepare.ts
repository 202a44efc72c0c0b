import { join } from "node:path";
import { extractPgliteTemplate, holdsPgliteDatabase } from "./pglite-template.ts";

/**
 * The parts of an embedded PGlite start that need no PGlite instance, begun ahead of it: both run
 * mostly off the event loop (JavaScriptCore compiles WebAssembly on its own threads, `Bun.Archive`
 * extracts on Bun's; a 1 ms timer kept ticking through both), so `src/main.ts` starts them before
 * it loads the server's modules and they overlap (docs/BENCHMARKS.md, "Start-up, stop 25").
 */
export interface PglitePreparation {
  /** PGlite's WebAssembly (`pglite.wasm`, 9 MB) compiled, for `PGlite.create({ pgliteWasmModule })`. */
  wasmModule: Promise<WebAssembly.Module>;
  /**
   * Settles once `<dataDir>/pglite` holds a database: the template extracted into a fresh one
   * (src/db/pglite-template.ts), at once for an existing one, or for an in-memory database.
   * Rejects with the file system's error.
   */
  dataDir: Promise<void>;
}

let compiled: Promise<WebAssembly.Module> | undefined;

/** PGlite's WebAssembly module, compiled once per process (tests open many databases). */
function compilePgliteWasm(): Promise<WebAssembly.Module> {
  compiled ??= Bun.file(new URL("./pglite.wasm", import.meta.resolve("@electric-sql/pglite")))
    .bytes()
    .then((bytes) => WebAssembly.compile(bytes));
  return compiled;
}

/**
 * Begins what PGlite needs before it can open `dataDir/pglite` (`null`: in memory, nothing to
 * write). Writes nothing but the template a fresh directory would get from `openDatabase` anyway.
 * Both promises are marked handled here, so a failure surfaces where they are awaited (openDatabase),
 * not as an unhandled rejection while something else fails first.
 */
export function preparePglite(dataDir: string | null): PglitePreparation {
  const dir = dataDir === null ? undefined : join(dataDir, "pglite");
  const preparation: PglitePreparation = {
    wasmModule: compilePgliteWasm(),
    dataDir:
      dir === undefined || holdsPgliteDatabase(dir)
        ? Promise.resolve()
        : extractPgliteTemplate(dir).then(() => undefined),
  };
  preparation.wasmModule.catch(() => {});
  preparation.dataDir.catch(() => {});
  return preparation;
}
