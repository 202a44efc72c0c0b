import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "amqplib";
import { BootExited, bootOnFreePorts, type PortSource } from "./free-port.ts";

/** The RabbitMQ server script run directly (the /usr/sbin wrapper switches to the rabbitmq user). */
const SERVER = process.env.TEST_RABBITMQ_SERVER ?? "/usr/lib/rabbitmq/bin/rabbitmq-server";

/**
 * A private RabbitMQ node for fault injection (fault tests, the chaos load test): its own node name (`cbtest-<random>@localhost`),
 * AMQP and distribution ports, Mnesia and log directories and configuration (no management plugin,
 * no plugins at all), so killing it touches nothing else on the machine. Data survives `kill()` +
 * `start()` like a real crash and restart of the broker.
 *
 * Its ports are chosen free a moment before the node binds them; another process may take one in
 * between. A first boot whose node exits is retried on fresh ports (`bootOnFreePorts`), and a boot
 * succeeds only when the node that answers AMQP is this one (its `cluster_name`), never another
 * broker that holds the port.
 */
export class OwnRabbitMq {
  /** Also the node's `cluster_name`, which its AMQP handshake reports: how a boot knows it reached this node. */
  readonly clusterName = `cbtest-${randomBytes(4).toString("hex")}`;
  readonly nodeName = `${this.clusterName}@localhost`;
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
        `cluster_name = ${this.clusterName}`,
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

  /**
   * Picks free ports (AMQP and distribution) and starts a node on them; resolves when it accepts
   * AMQP connections. A node that exits during boot (a port taken meanwhile) is removed and
   * another started on fresh ports, up to BOOT_ATTEMPTS; a node that does not answer within
   * `bootTimeoutMs` (ms) is killed and its error thrown. `ports` is where the ports come from
   * (default `freePort`; tests hand out a taken one first).
   */
  static async start(options: { bootTimeoutMs?: number; ports?: PortSource } = {}): Promise<OwnRabbitMq> {
    return bootOnFreePorts(async (ports) => {
      const port = await ports();
      let distPort = await ports();
      while (distPort === port) distPort = await ports();
      const broker = new OwnRabbitMq(port, distPort);
      try {
        await broker.start(options.bootTimeoutMs);
      } catch (error) {
        await broker.destroy();
        throw error;
      }
      return broker;
    }, options.ports);
  }

  /** `amqp://guest:guest@127.0.0.1:<port>` */
  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.process !== undefined && this.process.exitCode === null && this.process.signalCode === null;
  }

  /**
   * (Re)starts the node on the same ports and data; resolves once this node (not another holding
   * the port) accepts AMQP connections. Throws `BootExited` when the node exits during boot, and an
   * Error after `bootTimeoutMs` (ms) without an answer (the node is killed then).
   */
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
      if (!this.running) throw new BootExited(`rabbitmq-server exited during boot:\n${this.output.join("")}`);
      try {
        // A port held by something that accepts and never answers would hang the handshake: bounded.
        const connection = await connect(this.url, { timeout: 5_000 });
        connection.on("error", () => {});
        const answered = connection.connection.serverProperties.cluster_name;
        await connection.close();
        // Another broker holds the port (ours failed to bind it and is exiting): not booted.
        if (answered !== this.clusterName) throw new Error(`port ${this.port} answered by ${answered}`);
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
