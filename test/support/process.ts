import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { waitUntil } from "./ws.ts";

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

/** The repository's root: where `src/main.ts` is run from. */
const ROOT = resolve(import.meta.dir, "../..");

/** A node process `spawnNodeProcess` started. */
export interface SpawnedNode {
  proc: Subprocess;
  /** The public and admin listeners' URLs, from its "clearbox node started" line. */
  url: string;
  adminUrl: string;
  /** Resolves once the node has logged a line with `"msg":"<msg>"` (at most `timeoutMs`). */
  logged(msg: string, timeoutMs?: number): Promise<void>;
  /** Everything the node printed on stdout so far (its JSON log lines). */
  output(): string;
}

/**
 * Runs `bun run src/main.ts` from the repository's root with exactly `env` (stderr inherited) and
 * resolves once it logs "clearbox node started" (at most 30 s; otherwise it is killed and this
 * throws with what it printed). Its stdout is read on to the end, so the child never blocks on a
 * full pipe and `logged` sees every later line. For tests that stop, SIGSTOP or kill -9 a node:
 * give each one its own DATA_DIR (`scratchDataDir`).
 */
export async function spawnNodeProcess(env: Record<string, string | undefined>): Promise<SpawnedNode> {
  const proc = Bun.spawn([process.execPath, "run", "src/main.ts"], {
    cwd: ROOT,
    env,
    stdout: "pipe",
    stderr: "inherit",
  });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    const line = text.split("\n").find((l) => l.includes('"clearbox node started"'));
    if (line) {
      void (async () => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          text += new TextDecoder().decode(value);
        }
      })();
      const { url, adminUrl } = JSON.parse(line) as { url: string; adminUrl: string };
      const logged = (msg: string, timeoutMs = 20_000) =>
        waitUntil(() => text.includes(`"msg":"${msg}"`), `the node to log "${msg}"`, timeoutMs);
      return { proc, url, adminUrl, logged, output: () => text };
    }
  }
  proc.kill(9);
  throw new Error(`the spawned node did not start:\n${text}`);
}
