import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "amqplib";
import { freePort } from "./free-port.ts";

/** The RabbitMQ server script run directly (the /usr/sbin wrapper switches to the rabbitmq user). */
const SERVER = process.env.TEST_RABBITMQ_SERVER ?? "/usr/lib/rabbitmq/bin/rabbitmq-server";

/**
 * A private RabbitMQ node for fault injection (fault tests, the chaos load test): its own node name (`cbtest-<random>@localhost`),
 * AMQP and distribution ports, Mnesia and log directories and configuration (no management plugin,
 * no plugins at all), so killing it touches nothing else on the machine. Data survives `kill()` +
 * `start()` like a real crash and restart of the broker.
 */
export class OwnRabbitMq {
  readonly nodeName = `cbtest-${randomBytes(4).toString("hex")}@localhost`;
  readonly dir = mkdtempSync(join(tmpdir(), "cb-rabbit-"));
  private process: ChildProcess | undefined;
  private output: string[] = [];

  private constructor(
    readonly port: number,
    readonly distPort: number,
  ) {
    mkdirSync(join(this.dir, "mnesia"));
    mkdirSync(join(this.dir, "log"));
    mkdirSync(join(this.dir, "home"));
    writeFileSync(
      join(this.dir, "rabbitmq.conf"),
      [
        `listeners.tcp.default = 127.0.0.1:${port}`,
        "loopback_users = none",
        "log.console = true",
        "log.console.level = warning",
        "log.file = false",
        "",
      ].join("\n"),
    );
    // An empty plugin list: no management (or any other) plugin, nothing listening but AMQP.
    writeFileSync(join(this.dir, "enabled_plugins"), "[].\n");
  }

  /** Picks free ports and starts the node; resolves when it accepts AMQP connections. */
  static async start(bootTimeoutMs = 90_000): Promise<OwnRabbitMq> {
    const broker = new OwnRabbitMq(await freePort(), await freePort());
    await broker.start(bootTimeoutMs);
    return broker;
  }

  /** `amqp://guest:guest@127.0.0.1:<port>` */
  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.process !== undefined && this.process.exitCode === null && this.process.signalCode === null;
  }

  /** (Re)starts the node on the same ports and data; resolves once AMQP connections succeed. */
  async start(bootTimeoutMs = 90_000): Promise<void> {
    if (this.running) return;
    this.output = [];
    const child = spawn(SERVER, [], {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: join(this.dir, "home"),
        RABBITMQ_NODENAME: this.nodeName,
        RABBITMQ_NODE_IP_ADDRESS: "127.0.0.1",
        RABBITMQ_NODE_PORT: String(this.port),
        RABBITMQ_DIST_PORT: String(this.distPort),
        RABBITMQ_CONFIG_FILE: join(this.dir, "rabbitmq.conf"),
        RABBITMQ_ENABLED_PLUGINS_FILE: join(this.dir, "enabled_plugins"),
        RABBITMQ_MNESIA_BASE: join(this.dir, "mnesia"),
        RABBITMQ_LOG_BASE: join(this.dir, "log"),
        RABBITMQ_CONF_ENV_FILE: join(this.dir, "rabbitmq-env.conf"),
        ERL_EPMD_ADDRESS: "127.0.0.1",
      },
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group, so kill() reaches the Erlang VM and its helpers.
      detached: true,
    });
    const keep = (chunk: Buffer) => {
      this.output.push(chunk.toString());
      if (this.output.length > 200) this.output.shift();
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.process = child;
    const deadline = Date.now() + bootTimeoutMs;
    for (;;) {
      if (!this.running) throw new Error(`rabbitmq-server exited during boot:\n${this.output.join("")}`);
      try {
        const connection = await connect(this.url);
        connection.on("error", () => {});
        await connection.close();
        return;
      } catch {
        if (Date.now() > deadline) {
          this.kill();
          throw new Error(
            `rabbitmq-server did not accept connections in ${bootTimeoutMs} ms:\n${this.output.join("")}`,
          );
        }
        await Bun.sleep(200);
      }
    }
  }

  /** kill -9 of the whole node (its process group), as a crash; waits until it is gone. */
  kill(): void {
    const child = this.process;
    if (!child?.pid) return;
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }

  /** Kills the node and waits for its process to be reaped. */
  async crash(): Promise<void> {
    const child = this.process;
    if (!child) return;
    const exited =
      child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve()
        : new Promise<void>((resolve) => child.once("exit", () => resolve()));
    this.kill();
    await exited;
  }

  /** Kills the node and removes its directory. Safe to call twice and after a failed start. */
  async destroy(): Promise<void> {
    await this.crash();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
