import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import postgres from "postgres";
import { BootExited, bootOnFreePorts, type PortSource, waitFor } from "./free-port.ts";

/**
 * A PostgreSQL server binary (`initdb`, `postgres`): on the PATH, else in Debian's
 * `/usr/lib/postgresql/<version>/bin` (the newest), where the `postgresql` package puts them.
 */
function serverBinary(name: string): string {
  const onPath = Bun.which(name);
  if (onPath) return onPath;
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const version of versions) {
    const candidate = join(root, version, "bin", name);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`no ${name} found (install PostgreSQL's server package)`);
}

/** PostgreSQL refuses to run as root: as root, the server runs as this OS user. */
const OS_USER = "postgres";

/**
 * `cmd` as the OS user PostgreSQL may run as (itself when not root). `setpriv` execs the command
 * (no process in between), so the spawned pid is the postmaster's and SIGKILL reaches it.
 */
function asServerUser(cmd: string[]): string[] {
  return userInfo().uid === 0
    ? ["setpriv", `--reuid=${OS_USER}`, `--regid=${OS_USER}`, "--init-groups", ...cmd]
    : cmd;
}

/**
 * A private PostgreSQL cluster (fault tests, the chaos load test): `initdb` into a temporary directory, then `postgres` on a
 * free port of 127.0.0.1 (trust authentication, fsync off: a fault test, not a durability test).
 * The caller kills the postmaster with SIGKILL and starts it again on the same data directory (crash
 * recovery runs, as after a real crash); the machine's shared server is never touched.
 * The port is chosen free a moment before the postmaster binds it: a first boot whose postmaster
 * exits (the port taken meanwhile) is retried on a fresh port, and a boot counts only when the
 * server that answers is this one (its data directory), never another holding the port.
 */
export class OwnPostgres {
  private proc: Subprocess | undefined;

  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly settings: Readonly<Record<string, string>>,
  ) {}

  /**
   * Creates the cluster (initdb, a few seconds) and starts it; resolves once it takes connections.
   * `settings` are server parameters (`-c name=value`) over the defaults above, kept across restarts:
   * e.g. `{ fsync: "on" }` for a test that counts WAL flushes. A postmaster that exits during its
   * first boot (its port taken meanwhile) is started again on a fresh port, up to BOOT_ATTEMPTS;
   * `ports` is where ports come from (default `freePort`; tests hand out a taken one first).
   */
  static async start(
    settings: Readonly<Record<string, string>> = {},
    options: { ports?: PortSource } = {},
  ): Promise<OwnPostgres> {
    const dir = mkdtempSync(join(tmpdir(), "clearbox-pg-"));
    if (userInfo().uid === 0) {
      const { uid, gid } = userInfoOf(OS_USER);
      chownSync(dir, uid, gid);
    }
    const init = Bun.spawn(
      asServerUser([
        serverBinary("initdb"),
        "-D",
        join(dir, "data"),
        "-U",
        "postgres",
        "--auth=trust",
        "-N",
        "-E",
        "UTF8",
      ]),
      { stdout: "ignore", stderr: "pipe" },
    );
    if ((await init.exited) !== 0) {
      const stderr = await new Response(init.stderr as ReadableStream).text();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`initdb failed: ${stderr.slice(0, 500)}`);
    }
    try {
      return await bootOnFreePorts(async (ports) => {
        const pg = new OwnPostgres(await ports(), dir, settings);
        try {
          await pg.boot(true);
        } catch (error) {
          await pg.kill();
          throw error;
        }
        return pg;
      }, options.ports);
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /** A URL for `database` on this cluster (the `postgres` superuser, trust). */
  url(database = "postgres"): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Creates an empty database and returns its URL. */
  async createDatabase(name: string): Promise<string> {
    const sql = postgres(this.url(), { max: 1, onnotice: () => {} });
    try {
      await sql.unsafe(`create database ${name}`);
    } finally {
      await sql.end();
    }
    return this.url(name);
  }

  /** `kill -9` of the postmaster: its backends notice and exit; every connection is cut. */
  async kill(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc) return;
    proc.kill(9);
    await proc.exited;
  }

  /**
   * Starts the server (again) on the same port and data directory; resolves once it (not another
   * server on the port) takes connections.
   */
  async restart(): Promise<void> {
    await this.boot(false);
  }

  /**
   * Spawns the postmaster and waits until it answers with this cluster's data directory. After a
   * kill, the backends of the killed postmaster may hold its shared memory for a moment, so a
   * postmaster that exits is started again until the 60 s are up; on a first boot (`first`: a new
   * cluster, nothing held) one that exits throws `BootExited` at once (its port is taken).
   */
  private async boot(first: boolean): Promise<void> {
    if (this.running) throw new Error("postgres is already running");
    const data = join(this.dir, "data");
    await waitFor(
      "postgres",
      async () => {
        if (first && this.proc && !this.running)
          throw new BootExited(`postgres on port ${this.port} exited during its first boot`);
        if (!this.running) {
          this.proc = Bun.spawn(
            asServerUser([
              serverBinary("postgres"),
              "-D",
              data,
              "-p",
              String(this.port),
              "-k",
              this.dir,
              "-c",
              "listen_addresses=127.0.0.1",
              "-c",
              "fsync=off",
              "-c",
              "max_connections=200",
              ...Object.entries(this.settings).flatMap(([name, value]) => ["-c", `${name}=${value}`]),
            ]),
            { stdout: "ignore", stderr: "ignore" },
          );
        }
        const sql = postgres(this.url(), { max: 1, connect_timeout: 2, onnotice: () => {} });
        try {
          const [row] = await sql<{ data_directory: string }[]>`show data_directory`;
          // Another server holds the port (ours failed to bind it and is exiting): not booted.
          if (row?.data_directory !== data) throw new Error(`port ${this.port} answered by another server`);
        } finally {
          await sql.end({ timeout: 1 }).catch(() => {});
        }
      },
      60_000,
    );
  }

  /** Stops the server and removes its data directory (every test file's afterAll). */
  async stop(): Promise<void> {
    await this.kill();
    // Backends of a SIGKILLed postmaster exit on their own shortly after; then the files can go.
    await Bun.sleep(200);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** uid and gid of an OS user, from /etc/passwd. */
function userInfoOf(name: string): { uid: number; gid: number } {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no OS user ${name} to run PostgreSQL as`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}
