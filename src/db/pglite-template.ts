import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

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

/** Where `npm run db:template` writes the version the template was made with. */
export const PGLITE_TEMPLATE_VERSION_FILE = TEMPLATE_VERSION;
