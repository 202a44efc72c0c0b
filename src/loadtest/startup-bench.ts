/**
 * `npm run bench:startup [-- --runs N]`: how long the embedded default (`bun run src/main.ts`, no
 * DATABASE_URL) takes from spawn to its first `/healthz` 200, on a fresh DATA_DIR (cold) and again
 * on the same directory after a graceful stop (restart). Prints each run, the median, and the
 * machine's load average, since the figure moves with whatever else the two cores are doing.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { exitOnHelp } from "./bench-usage.ts";

const ROOT = resolve(import.meta.dir, "../..");
exitOnHelp(
  `usage: npm run bench:startup [-- --runs N]\n\nSpawns the embedded default N times (1-50, default 5) on a fresh DATA_DIR and again after a\ngraceful stop; prints each time to its first /healthz 200, the median and the load average.`,
);
const { values } = parseArgs({ options: { runs: { type: "string", default: "5" } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1 || runs > 50) {
  console.error("bench:startup: --runs must be a whole number, 1-50");
  process.exit(2);
}

/** Spawns a node on `dataDir` and resolves with the milliseconds until /healthz answered 200, and its process. */
async function timeToHealthy(dataDir: string) {
  const begin = performance.now();
  const child = Bun.spawn([process.execPath, "run", "src/main.ts"], {
    cwd: ROOT,
    env: { ...process.env, DATA_DIR: dataDir, PORT: "0", ADMIN_PORT: "0", NODE_ENV: "development" },
    stdout: "pipe",
    stderr: "ignore",
  });
  const decoder = new TextDecoder();
  let buffered = "";
  let url: string | undefined;
  const reader = child.stdout.getReader();
  while (!url) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the node exited before it listened");
    buffered += decoder.decode(value, { stream: true });
    const line = buffered.split("\n").find((l) => l.includes('"clearbox node started"'));
    if (line) url = JSON.parse(line).url as string;
  }
  reader.releaseLock();
  void child.stdout.pipeTo(new WritableStream());
  for (;;) {
    const ok = await fetch(`${url}/healthz`)
      .then((r) => r.status === 200)
      .catch(() => false);
    if (ok) break;
    await Bun.sleep(5);
  }
  return { ms: performance.now() - begin, child };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const cold: number[] = [];
const restart: number[] = [];
console.log(
  `load average before: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
);
for (let i = 0; i < runs; i++) {
  const dataDir = mkdtempSync(join(tmpdir(), "clearbox-startup-"));
  try {
    const first = await timeToHealthy(dataDir);
    first.child.kill("SIGTERM");
    await first.child.exited;
    const second = await timeToHealthy(dataDir);
    second.child.kill("SIGTERM");
    await second.child.exited;
    cold.push(first.ms);
    restart.push(second.ms);
    console.log(`run ${i + 1}: cold ${first.ms.toFixed(0)} ms, restart ${second.ms.toFixed(0)} ms`);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}
console.log(
  `median of ${runs}: cold ${median(cold).toFixed(0)} ms, restart ${median(restart).toFixed(0)} ms; ` +
    `load average after: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
);
