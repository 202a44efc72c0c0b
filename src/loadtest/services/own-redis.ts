import type { Subprocess } from "bun";
import Redis from "ioredis";
import { freePort, waitFor } from "./free-port.ts";

/**
 * A private redis-server (fault tests, the chaos load test) on a free port, without persistence (`--save ""`,
 * `--appendonly no`), so a restart comes back empty as a crashed cache would. Fault tests and the chaos scenario kill it
 * with SIGKILL and start it again on the same port; the machine's shared Redis is never touched.
 */
export class OwnRedis {
  private proc: Subprocess | undefined;

  private constructor(readonly port: number) {}

  /** Starts a server on a free port and waits until it answers PING. */
  static async start(): Promise<OwnRedis> {
    const redis = new OwnRedis(await freePort());
    await redis.restart();
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** True while the server process runs. */
  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** `kill -9`: the server and every key in it are gone at once. */
  async kill(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc) return;
    proc.kill(9);
    await proc.exited;
  }

  /** Starts the server (again) on the same port, empty, and waits until it answers PING. */
  async restart(): Promise<void> {
    if (this.running) throw new Error("redis-server is already running");
    this.proc = Bun.spawn(
      [
        "redis-server",
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
      ],
      { stdout: "ignore", stderr: "ignore" },
    );
    await waitFor("redis-server", async () => {
      const client = new Redis(this.url, {
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      client.on("error", () => {});
      try {
        await client.connect();
        await client.ping();
      } finally {
        client.disconnect();
      }
    });
  }

  /** Kills the server for good (every test file's afterAll). */
  async stop(): Promise<void> {
    await this.kill();
  }
}
