import type { Subprocess } from "bun";
import Redis from "ioredis";
import { BootExited, bootOnFreePorts, type PortSource, waitFor } from "./free-port.ts";

/**
 * A private redis-server (fault tests, the chaos load test) on a free port, without persistence (`--save ""`,
 * `--appendonly no`), so a restart comes back empty as a crashed cache would. Fault tests and the chaos scenario kill it
 * with SIGKILL and start it again on the same port; the machine's shared Redis is never touched.
 * The port is chosen free a moment before the server binds it: a first boot whose server exits (the
 * port taken meanwhile) is retried on a fresh port, and a boot counts only when the server that
 * answers is this one (its pid), never another holding the port.
 */
export class OwnRedis {
  private proc: Subprocess | undefined;

  private constructor(readonly port: number) {}

  /**
   * Starts a server on a free port and waits until it answers PING; a server that exits during
   * boot (its port taken meanwhile) is replaced by one on a fresh port, up to BOOT_ATTEMPTS. `ports`
   * is where ports come from (default `freePort`; tests hand out a taken one first).
   */
  static async start(options: { ports?: PortSource } = {}): Promise<OwnRedis> {
    return bootOnFreePorts(async (ports) => {
      const redis = new OwnRedis(await ports());
      try {
        await redis.restart();
      } catch (error) {
        await redis.kill();
        throw error;
      }
      return redis;
    }, options.ports);
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

  /**
   * Starts the server (again) on the same port, empty, and waits until it (not another server on
   * the port) answers PING. Throws `BootExited` when the server exits during boot.
   */
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
    const proc = this.proc;
    await waitFor("redis-server", async () => {
      if (proc.exitCode !== null || proc.signalCode !== null)
        throw new BootExited(`redis-server on port ${this.port} exited during boot`);
      const client = new Redis(this.url, {
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      client.on("error", () => {});
      try {
        await client.connect();
        const info = await client.info("server");
        // Another server holds the port (ours failed to bind it and is exiting): not booted.
        if (!info.includes(`process_id:${proc.pid}\r\n`))
          throw new Error(`port ${this.port} answered by another server`);
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
