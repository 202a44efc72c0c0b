import { afterAll, describe, expect, test } from "bun:test";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";
import { BootExited, bootOnFreePorts, freePort } from "../support/free-port.ts";
import { OwnRedis } from "../support/own-redis.ts";
import { type Finished, runToEnd } from "../support/process.ts";
import { deleteRedisPrefix } from "../support/redis.ts";

// Issue 14 item 6: start-up and shutdown rough edges. Each case runs src/main.ts (or `npm start`)
// as its own process and looks at its exit code and what it printed.

const ROOT = resolve(import.meta.dir, "../..");
const BUN = process.execPath;
const dirs: string[] = [];

afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "cb-startup-"));
  dirs.push(dir);
  return dir;
}

function baseEnv(extra: Record<string, string>): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? "/tmp",
    NODE_ENV: "test",
    DATA_DIR: dataDir(),
    PORT: "0",
    ADMIN_PORT: "0",
    LOG_LEVEL: "info",
    ...extra,
  };
}

/** Runs src/main.ts to its end (it must exit by itself within `timeoutMs`). */
function runToExit(env: Record<string, string>, timeoutMs = 60_000): Promise<Finished> {
  return runToEnd([BUN, "run", "src/main.ts"], { cwd: ROOT, env, timeoutMs });
}

/** The one-line start-up refusal: `clearbox: <VARIABLE>: …`, no stack trace or source excerpt. */
function expectOneLine(ran: Finished, variable: string, code: number): void {
  const lines = ran.stderr.trim().split("\n");
  expect({ code: ran.code, lines }).toMatchObject({
    code,
    lines: [expect.stringMatching(new RegExp(`^clearbox: ${variable}: `))],
  });
  expect(ran.stderr).not.toContain("    at ");
  expect(ran.stdout).not.toContain("Unhandled error event");
}

/** Starts a process and resolves once a line of its stdout contains `marker` (rejects if it exits first). */
function startUntil(
  command: string[],
  env: Record<string, string>,
  marker: string,
): Promise<{ child: ChildProcess; lines: string[] }> {
  const [file, ...args] = command as [string, ...string[]];
  const child = spawn(file, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${marker}" in 60 s:\n${lines.join("\n")}`)), 60_000);
    const take = (chunk: Buffer) => {
      for (const line of chunk.toString().split("\n")) {
        if (!line) continue;
        lines.push(line);
        if (line.includes(marker)) {
          clearTimeout(timer);
          resolve({ child, lines });
        }
      }
    };
    child.stdout?.on("data", take);
    child.stderr?.on("data", take);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before "${marker}":\n${lines.join("\n")}`));
    });
  });
}

/** What a node prints when its PORT was taken by another process. */
const PORT_TAKEN = /clearbox: PORT: port \d+ is already in use/;

/**
 * Runs `attempt` with a port free a moment ago for the node's PORT, again with a fresh one (up to
 * BOOT_ATTEMPTS in all) when another process took it before the node bound it: `attempt` threw
 * saying so, or `taken` of its result says so.
 */
function onFreePort<T>(attempt: (port: number) => Promise<T>, taken: (result: T) => boolean = () => false) {
  return bootOnFreePorts(async (ports) => {
    const port = await ports();
    let result: T;
    try {
      result = await attempt(port);
    } catch (error) {
      if (PORT_TAKEN.test(String((error as Error)?.message))) throw new BootExited(String(error));
      throw error;
    }
    if (taken(result)) throw new BootExited(`port ${port} taken before the node bound it`);
    return { port, result };
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("start-up refusals name the variable in one line", () => {
  test("DATABASE_URL unreachable: exit 69", async () => {
    const port = await freePort();
    const ran = await runToExit(baseEnv({ DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/nothing` }));
    expectOneLine(ran, "DATABASE_URL", 69);
    expect(ran.stderr).toContain("ECONNREFUSED");
  });

  test("REDIS_URL unreachable: exit 69, no ioredis 'Unhandled error event'", async () => {
    const port = await freePort();
    const ran = await runToExit(
      baseEnv({ REDIS_URL: `redis://127.0.0.1:${port}`, AMQP_URL, REDIS_PREFIX: `${runPrefix()}:` }),
    );
    expectOneLine(ran, "REDIS_URL", 69);
    expect(ran.stderr).toContain("ECONNREFUSED");
  });

  test("AMQP_URL unreachable: waits STARTUP_WAIT_SECONDS with progress logged, then exit 69", async () => {
    const port = await freePort();
    const ran = await runToExit(
      baseEnv({ AMQP_URL: `amqp://guest:guest@127.0.0.1:${port}`, STARTUP_WAIT_SECONDS: "6" }),
    );
    expectOneLine(ran, "AMQP_URL", 69);
    expect(ran.stderr).toContain("within 6 s");
    expect(ran.stdout).toContain('"msg":"waiting for rabbitmq"');
    // The password in the URL is never printed.
    expect(ran.stdout + ran.stderr).not.toContain("guest:guest");
  });

  test("REDIS_URL without AMQP_URL: a configuration error, exit 78", async () => {
    const ran = await runToExit(baseEnv({ REDIS_URL: "redis://127.0.0.1:6379" }));
    expect(ran.code).toBe(78);
    expect(ran.stderr).toContain("AMQP_URL: expected an amqp:// or amqps:// URL when REDIS_URL is set");
    expect(ran.stderr).not.toContain("    at ");
  });

  // A path the node cannot write: a regular file where a directory must be (ENOTDIR/EEXIST even for root,
  // whom permission bits do not stop). Before: a stack trace and exit 1, or, for the ledger, a node that
  // started and failed the first erasure request.
  function aFile(): string {
    const file = join(dataDir(), "a-file");
    writeFileSync(file, "");
    return file;
  }

  test("DATA_DIR that cannot be made a directory: exit 78, one line naming DATA_DIR", async () => {
    const file = aFile();
    // Without JWT_SECRET the generated secret is the first write; with it, the data directory itself.
    for (const extra of [{}, { JWT_SECRET: "x".repeat(32) }] as Record<string, string>[]) {
      const ran = await runToExit(baseEnv({ DATA_DIR: file, ...extra }));
      expectOneLine(ran, "DATA_DIR", 78);
      expect(ran.stderr).toContain(file);
    }
  });

  test("ERASURE_LEDGER_FILE that cannot be written: exit 78 before listening, naming it", async () => {
    const ledger = join(aFile(), "erasure-ledger");
    const dir = dataDir();
    const ran = await runToExit(baseEnv({ DATA_DIR: dir, ERASURE_LEDGER_FILE: ledger }));
    expectOneLine(ran, "ERASURE_LEDGER_FILE", 78);
    expect(ran.stdout).not.toContain("clearbox node started");
    // Refused before anything was opened: no database was written into the data directory.
    expect(existsSync(join(dir, "pglite"))).toBe(false);
  });

  test("a PUBLIC_HOST or ADMIN_HOST the node cannot bind: exit 69, one line naming the variable", async () => {
    // 192.0.2.1 (TEST-NET-1) is never an address of this machine; `.invalid` never resolves (RFC 6761).
    const cases = [
      ["PUBLIC_HOST", "192.0.2.1", "is not an address of this machine"],
      ["PUBLIC_HOST", "nonsense.invalid", "is not an address of this machine"],
      ["ADMIN_HOST", "192.0.2.1", "is not an address of this machine"],
    ] as const;
    for (const [variable, host, what] of cases) {
      const ran = await runToExit(baseEnv({ [variable]: host }));
      expectOneLine(ran, variable, 69);
      expect(ran.stderr).toContain(`${host} ${what}`);
    }
  });

  test("ADMIN_PORT equal to PORT: exit 69 saying the node's own public listener holds it", async () => {
    const { port, result: ran } = await onFreePort(
      (port) => runToExit(baseEnv({ PORT: String(port), ADMIN_PORT: String(port) })),
      (ran) => PORT_TAKEN.test(ran.stderr),
    );
    expectOneLine(ran, "ADMIN_PORT", 69);
    expect(ran.stderr).toContain(`port ${port} is PORT too: this node's public listener holds it`);
  });

  test("a second node on a port in use fails with PORT named (exit 69) instead of sharing the port", async () => {
    const { port, result: first } = await onFreePort((port) =>
      startUntil([BUN, "run", "src/main.ts"], baseEnv({ PORT: String(port) }), "clearbox node started"),
    );
    try {
      const second = await runToExit(baseEnv({ PORT: String(port) }));
      expectOneLine(second, "PORT", 69);
      expect(second.stderr).toContain(`port ${port} is already in use`);
      // The first node still serves alone.
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    } finally {
      first.child.kill("SIGTERM");
      await exited(first.child);
    }
  });
});

describe("shutdown", () => {
  test("kill -TERM of `npm start` stops the bun process too", async () => {
    const npm = await startUntil(["npm", "start"], baseEnv({}), "clearbox node started");
    const npmPid = npm.child.pid as number;
    // npm runs the script through `sh -c`; `exec` in the script makes bun npm's own child.
    const children = Bun.spawnSync(["pgrep", "-P", String(npmPid)])
      .stdout.toString()
      .trim()
      .split("\n");
    const bunPid = Number(children[0]);
    expect(bunPid).toBeGreaterThan(0);
    process.kill(npmPid, "SIGTERM");
    await exited(npm.child);
    const deadline = Date.now() + 30_000;
    while (alive(bunPid) && Date.now() < deadline) await Bun.sleep(50);
    const orphaned = alive(bunPid);
    // Never leave an orphaned node serving after a failed run.
    if (orphaned) process.kill(bunPid, "SIGKILL");
    expect(orphaned).toBe(false);
    expect(npm.lines.join("\n")).toContain('"msg":"clearbox node stopped"');
  });

  test("SIGTERM during a Redis outage stops the node cleanly (no MaxRetriesPerRequestError crash)", async () => {
    // Its own server on a fresh port, and the one answering is this one (OwnRedis: retried when the
    // port was taken meanwhile, the answer checked against its pid).
    const redis = await OwnRedis.start();
    const prefix = `${runPrefix()}:`;
    try {
      const node = await startUntil(
        [BUN, "run", "src/main.ts"],
        baseEnv({
          REDIS_URL: redis.url,
          AMQP_URL,
          REDIS_PREFIX: prefix,
          CLUSTER_HEARTBEAT_MS: "250",
        }),
        "clearbox node started",
      );
      await redis.kill();
      // Let the node notice (heartbeats fail) before it is asked to stop.
      await Bun.sleep(1_000);
      node.child.kill("SIGTERM");
      const code = await Promise.race([exited(node.child), Bun.sleep(45_000).then(() => "hung" as const)]);
      if (code === "hung") node.child.kill("SIGKILL");
      const output = node.lines.join("\n");
      expect({ code, crashed: /MaxRetriesPerRequestError[^"]*\n\s+at /.test(output) }).toEqual({
        code: 0,
        crashed: false,
      });
      expect(output).toContain('"msg":"shutting down"');
      expect(output).not.toContain("Unhandled error event");
    } finally {
      await redis.stop();
      // The queues of this node live on the shared RabbitMQ under the prefix; Redis keys died with the server.
      await deleteRedisPrefix(prefix).catch(() => 0);
    }
  }, 90_000);
});
