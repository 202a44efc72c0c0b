import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** What a finished child process printed, and how it ended. */
export interface Finished {
  /** Exit code (null when a signal ended it). */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `command` to its end and collects its output. Asynchronous on purpose: a node under test
 * may serve from this process, and a blocking spawnSync would leave the child's requests
 * unanswered. With `timeoutMs`, the child is killed (SIGKILL) if it has not exited by then.
 */
export async function runToEnd(
  command: string[],
  options: { cwd?: string; env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<Finished> {
  const child = Bun.spawn(command, {
    cwd: options.cwd,
    env: options.env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer =
    options.timeoutMs === undefined ? undefined : setTimeout(() => child.kill(9), options.timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

const scratchDirs: string[] = [];

/**
 * A fresh temporary DATA_DIR for one spawned node process; {@link removeScratchDataDirs} (in the
 * file's `afterAll`, once its processes ended) removes it. A node holds its DATA_DIR for its life
 * (`lockDataDir`): node processes spawned without one would all use `./data` and every one after
 * the first would exit 78.
 */
export function scratchDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-spawned-"));
  scratchDirs.push(dir);
  return dir;
}

/** Removes every directory {@link scratchDataDir} made so far (bun's test runner fires no `exit` event). */
export function removeScratchDataDirs(): void {
  for (const dir of scratchDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}
