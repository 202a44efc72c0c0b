import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

/** The React app's Vite project and where its build goes. */
export const WEB_ROOT = resolve(import.meta.dir, "../../web");
export const WEB_DIST = join(WEB_ROOT, "dist");

function newest(dir: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs);
  }
  return latest;
}

/**
 * Builds the page with Vite (`web/` → `web/dist`) when there is no build yet or a source file
 * is newer than it; returns the directory to serve. The build is not committed: a fresh clone
 * builds on its first `npm run client:web` (a few seconds), CI in the test that starts one.
 * `onBuild` is called once before a build starts (not when the build is current), so a caller
 * can say why nothing else shows for those seconds.
 */
export async function ensureBuilt(
  options: { force?: boolean; quiet?: boolean; onBuild?: () => void } = {},
): Promise<string> {
  const index = join(WEB_DIST, "index.html");
  const sources = Math.max(newest(join(WEB_ROOT, "src")), statSync(join(WEB_ROOT, "index.html")).mtimeMs);
  if (!options.force && existsSync(index) && statSync(index).mtimeMs >= sources) return WEB_DIST;
  options.onBuild?.();
  const { build } = await import("vite");
  await build({
    root: WEB_ROOT,
    configFile: join(WEB_ROOT, "vite.config.ts"),
    logLevel: options.quiet ? "error" : "info",
  });
  return WEB_DIST;
}

if (import.meta.main) await ensureBuilt({ force: true });
