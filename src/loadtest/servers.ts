import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { deleteMatching, globLiteral } from "../redis/delete-matching.ts";
import { GC_HOOK_MSG, type HeapReading } from "./gc-hook.ts";
import type { Stack } from "./options.ts";

const REPO_ROOT = resolve(import.meta.dir, "../..");
/**
 * When LOADTEST_SERVER_LOG names a file, every output line of the spawned servers goes to it (for
 * diagnosis; buffered, so the harness's event loop is not held up by a write per line).
 */
const serverLog = process.env.LOADTEST_SERVER_LOG
  ? Bun.file(process.env.LOADTEST_SERVER_LOG).writer()
  : undefined;
const START_TIMEOUT_MS = 60_000;
/** Every spawned server preloads the bench-only collection hook (gc-hook.ts: SIGUSR2, full collection). */
const GC_HOOK = resolve(import.meta.dir, "gc-hook.ts");
const GC_TIMEOUT_MS = 30_000;

/** A server process the harness started: where it listens, its pid, and the warnings it logged. */
export interface SpawnedServer {
  pid: number;
  url: string;
  adminUrl?: string;
  adminToken?: string;
  /** Log lines at warn level or above (pino levels ≥ 40), for the report. */
  problems: string[];
  /** Resolves with the exit code (or signal name) when the process ends, for whatever reason. */
  exited: Promise<number | string>;
  /**
   * Has the process run a full garbage collection (SIGUSR2 to the preloaded gc-hook.ts) and
   * resolves with its JS heap afterwards. Rejects when no answer comes within 30 s.
   */
  collectGarbage(): Promise<HeapReading>;
  stop(): Promise<void>;
}

/**
 * A log line for the report, at most 400 characters: a long JSON line (an error with its stack) is
 * cut down to its level, time, node, `msg` and the error's type and code, so its message survives
 * (pino writes `msg` last, where a plain cut would lose it).
 */
function shortProblem(line: string, parsed: Record<string, unknown> | undefined): string {
  if (line.length <= 400 || !parsed) return line.slice(0, 400);
  const err = parsed.err as { type?: unknown; code?: unknown } | undefined;
  const { level, time, node, msg } = parsed;
  return JSON.stringify({
    level,
    time,
    node,
    msg,
    ...(err ? { err: { type: err.type, code: err.code } } : {}),
  }).slice(0, 400);
}

/**
 * Starts `bun run <script>` and waits for the JSON log line whose `msg` is `readyMsg`; keeps
 * reading its output afterwards, so the child never blocks on a full pipe.
 */
async function spawnProcess(
  script: string,
  env: Record<string, string>,
  readyMsg: string,
  onExit?: () => Promise<void>,
  runtimeFlags: string[] = [],
) {
  const child = Bun.spawn([process.execPath, `--preload=${GC_HOOK}`, ...runtimeFlags, "run", script], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env, CLEARBOX_BENCH_GC_HOOK: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const problems: string[] = [];
  let ready: (line: Record<string, unknown>) => void = () => {};
  // Collections asked for and not answered yet, oldest first (the hook answers in order).
  const collecting: ((reading: HeapReading) => void)[] = [];
  const started = new Promise<Record<string, unknown>>((res) => {
    ready = res;
  });
  const read = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of stream) {
      buffered += decoder.decode(chunk, { stream: true });
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf("\n");
        serverLog?.write(`${line}\n`);
        let parsed: Record<string, unknown> | undefined;
        try {
          parsed = JSON.parse(line);
        } catch {}
        if (parsed?.msg === readyMsg) ready(parsed);
        else if (parsed?.msg === GC_HOOK_MSG) collecting.shift()?.(parsed as unknown as HeapReading);
        else if (!parsed || (typeof parsed.level === "number" && parsed.level >= 40)) {
          if (problems.length < 50 && line.trim()) problems.push(shortProblem(line, parsed));
        }
      }
    }
  };
  void read(child.stdout);
  void read(child.stderr);
  const timeout = new Promise<never>((_, reject) =>
    setTimeout(
      () =>
        reject(new Error(`${script} did not start within ${START_TIMEOUT_MS} ms: ${problems.join("\n")}`)),
      START_TIMEOUT_MS,
    ).unref(),
  );
  const exited = child.exited.then((code) => {
    throw new Error(`${script} exited with ${code} before it was ready: ${problems.join("\n")}`);
  });
  const line = await Promise.race([started, timeout, exited]);
  return {
    line,
    pid: child.pid,
    problems,
    exited: child.exited.then((code) => child.signalCode ?? code),
    collectGarbage() {
      return new Promise<HeapReading>((resolveReading, reject) => {
        const timer = setTimeout(() => {
          const at = collecting.indexOf(answer);
          if (at >= 0) collecting.splice(at, 1);
          reject(new Error(`${script} did not answer a collection request within ${GC_TIMEOUT_MS} ms`));
        }, GC_TIMEOUT_MS);
        const answer = (reading: HeapReading) => {
          clearTimeout(timer);
          resolveReading(reading);
        };
        collecting.push(answer);
        child.kill("SIGUSR2");
      });
    },
    async stop() {
      child.kill("SIGTERM");
      // A profiled node writes its profile on exit: give it time to finish a graceful stop.
      const graceMs = runtimeFlags.length > 0 ? 120_000 : 10_000;
      const killer = setTimeout(() => {
        problems.push(`${script} did not stop within ${graceMs / 1000} s of SIGTERM; killed`);
        child.kill("SIGKILL");
      }, graceMs);
      await child.exited;
      clearTimeout(killer);
      await serverLog?.flush();
      await onExit?.();
    },
  };
}

/** Starts the raw relay baseline. */
export async function spawnRelay(): Promise<SpawnedServer> {
  const p = await spawnProcess("src/loadtest/relay.ts", { PORT: "0" }, "relay started");
  return {
    pid: p.pid,
    url: String(p.line.url),
    problems: p.problems,
    exited: p.exited,
    collectGarbage: p.collectGarbage,
    stop: p.stop,
  };
}

const POSTGRES_URL = process.env.LOADTEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** Shared settings of the nodes of one run: stores, and a prefix that keeps the run's keys and queues apart. */
export interface ClusterEnv {
  env: Record<string, string>;
  /** The RabbitMQ queue prefix of the run (services stack). */
  queuePrefix?: string;
  cleanup(): Promise<void>;
}

/** Creates the run's PostgreSQL database (services stack) and picks a Redis/RabbitMQ prefix. */
export async function prepareStack(stack: Stack): Promise<ClusterEnv> {
  if (stack === "embedded") return { env: {}, cleanup: async () => {} };
  const name = `cb_load_${randomBytes(5).toString("hex")}`;
  const admin = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(POSTGRES_URL);
  url.pathname = `/${name}`;
  return {
    queuePrefix: name,
    env: {
      DATABASE_URL: url.toString(),
      REDIS_URL,
      AMQP_URL,
      REDIS_PREFIX: `${name}:`,
    },
    async cleanup() {
      await deleteRunQueues(url.toString(), name);
      await deleteRunKeys(`${name}:`);
      const sql = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end();
      }
    },
  };
}

/**
 * Deletes the RabbitMQ queues a run made (queue names start with the run's prefix): one offline
 * queue per device that was ever flushed to, read from the run's database before it is dropped,
 * and the nodes' inboxes. Left alone they would stay for the retention period (x-expires) and a
 * few runs pile up tens of thousands of queues on the broker, which slows the next runs.
 */
async function deleteRunQueues(databaseUrl: string, prefix: string): Promise<void> {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  let names: string[];
  try {
    const devices = await sql<
      { user_id: string; device_id: number }[]
    >`select user_id, device_id from devices`;
    names = devices.map((d) => `${prefix}.dev.${d.user_id}.${d.device_id}`);
  } finally {
    await sql.end();
  }
  const { connect } = await import("amqplib");
  const connection = await connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    // Deleting a queue that does not exist is not an error in RabbitMQ (queue.delete is idempotent).
    for (let i = 0; i < names.length; i += 500) {
      await Promise.all(names.slice(i, i + 500).map((q) => channel.deleteQueue(q)));
    }
    await channel.close();
  } finally {
    await connection.close();
  }
}

/** Deletes the run's Redis keys (last-seen times keep no TTL: ROPA keeps them until erasure). */
async function deleteRunKeys(prefix: string): Promise<void> {
  const { default: Redis } = await import("ioredis");
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 2 });
  try {
    await redis.connect();
    await deleteMatching(redis, `${globLiteral(prefix)}*`);
  } finally {
    redis.disconnect();
  }
}

/**
 * Starts one ClearBox node (`src/main.ts`) on a free loopback port with its own DATA_DIR, the
 * device rate limit lifted for load, a low argon2id cost, and an admin token so its `/metrics` can be read.
 */
export async function spawnNode(
  shared: Record<string, string>,
  index: number,
  profileDir?: string,
): Promise<SpawnedServer> {
  const dataDir = mkdtempSync(join(tmpdir(), "clearbox-load-"));
  const adminToken = randomBytes(18).toString("hex");
  const p = await spawnProcess(
    "src/main.ts",
    {
      NODE_ENV: "development",
      PORT: "0",
      ADMIN_PORT: "0",
      ADMIN_TOKEN: adminToken,
      DATA_DIR: dataDir,
      LOG_LEVEL: "info",
      DEVICE_RATE_LIMIT: "1000000",
      // Runs send far more than a person's day; the quota is still counted (its cost is measured).
      STORED_BYTES_PER_ACCOUNT_PER_DAY: "1000000000000",
      // Setting up 10,000 accounts at the default argon2id cost takes half an hour here; the
      // measured phases never hash a password, so the spawned nodes use a low cost.
      PASSWORD_HASH_MEMORY_KIB: "1024",
      PASSWORD_HASH_TIME_COST: "1",
      // Every virtual user logs in from this machine's one address.
      LOGIN_ATTEMPTS_PER_ADDRESS: "100000000",
      REGISTRATIONS_PER_ADDRESS: "100000000",
      // Chaos runs reconnect every client of a killed node, churn scenarios in loops.
      WS_CONNECTS_PER_DEVICE: "1000000",
      NODE_ID: `load-${index}-${randomBytes(3).toString("hex")}`,
      ...shared,
    },
    "clearbox node started",
    async () => rmSync(dataDir, { recursive: true, force: true }),
    // `--profile <dir>`: Bun's sampling profiler, written (also as markdown) when the node exits.
    profileDir ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${profileDir}`] : [],
  );
  return {
    pid: p.pid,
    url: String(p.line.url),
    adminUrl: typeof p.line.adminUrl === "string" ? p.line.adminUrl : undefined,
    adminToken,
    problems: p.problems,
    exited: p.exited,
    collectGarbage: p.collectGarbage,
    stop: p.stop,
  };
}
