import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import Redis from "ioredis";
import postgres from "postgres";
import { TEST_POSTGRES_URL } from "../support/postgres.ts";
import { TEST_REDIS_URL } from "../support/redis.ts";

const ROOT = resolve(import.meta.dir, "../..");

/** Processes whose environment holds `entry` (read from /proc; ones that end meanwhile are skipped). */
function processesWithEnv(entry: string): number[] {
  const found: number[] = [];
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      if (readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").includes(entry)) found.push(Number(pid));
    } catch {
      // gone, or not ours to read
    }
  }
  return found;
}

/** The RabbitMQ queues whose names start with `prefix` (`rabbitmqctl list_queues name`). */
async function queuesNamed(prefix: string): Promise<string[]> {
  const child = Bun.spawn(["rabbitmqctl", "-q", "--no-table-headers", "list_queues", "name"], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const out = await new Response(child.stdout).text();
  expect(await child.exited).toBe(0);
  return out.split("\n").filter((name) => name.startsWith(prefix));
}

test("a load run interrupted with SIGINT stops its node and leaves no database, Redis keys or queues behind", async () => {
  const child = Bun.spawn(
    [
      process.execPath,
      "run",
      "src/loadtest/main.ts",
      "one-to-one",
      "--stack",
      "services",
      "--users",
      "20",
      "--duration",
      "120",
      "--settle",
      "0",
      "--no-baseline",
    ],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe" },
  );
  // Read stderr until the run names itself and its flat-out phase is under way.
  let stderr = "";
  let run: string | undefined;
  const reader = child.stderr.getReader();
  const decoder = new TextDecoder();
  while (!stderr.includes("[clearbox")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the harness ended before its phases began: ${stderr}`);
    stderr += decoder.decode(value);
    run ??= /run (cb_load_[0-9a-f]+):/.exec(stderr)?.[1];
  }
  expect(run).toBeDefined();
  const name = run as string;
  const admin = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
  const redis = new Redis(TEST_REDIS_URL);
  try {
    // The run's state exists while it runs: the database, its keys, its node's inbox, the node.
    const nodeEnv = `REDIS_PREFIX=${name}:`;
    const present = async () => ({
      database: (await admin`select 1 from pg_database where datname = ${name}`).length,
      keys: (await redis.scan("0", "MATCH", `${name}:*`, "COUNT", 10_000))[1].length,
      queues: (await queuesNamed(`${name}.`)).length,
      nodes: processesWithEnv(nodeEnv).length,
    });
    let state = await present();
    for (let i = 0; i < 60 && Object.values(state).some((n) => n === 0); i++) {
      await Bun.sleep(1000);
      state = await present();
    }
    for (const n of Object.values(state)) expect(n).toBeGreaterThan(0);

    child.kill("SIGINT");
    const code = await child.exited;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += decoder.decode(value);
    }
    expect(stderr).toContain("SIGINT: stopping what the run started");
    expect(code).toBe(130);
    expect(await admin`select 1 from pg_database where datname = ${name}`).toHaveLength(0);
    let cursor = "0";
    const keys: string[] = [];
    do {
      const [next, batch] = await redis.scan(cursor, "MATCH", `${name}:*`, "COUNT", 10_000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== "0");
    expect(keys).toEqual([]);
    expect(await queuesNamed(`${name}.`)).toEqual([]);
    expect(processesWithEnv(nodeEnv)).toEqual([]);
  } finally {
    child.kill("SIGKILL");
    await admin.end();
    redis.disconnect();
  }
}, 180_000);
