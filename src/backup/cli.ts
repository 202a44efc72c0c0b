/**
 * Operator commands for backups of the embedded default (README, "Backup and restore"):
 *
 *   npm run backup -- [--admin-url <url>] [--ca <file>]
 *     asks a running node for an online snapshot (POST /admin/v1/backups); the admin token comes
 *     from $ADMIN_TOKEN or the file named by $ADMIN_TOKEN_FILE. Prints the manifest.
 *   npm run restore -- <backup directory> [--data-dir <dir>]
 *     with the node stopped: checks the backup's checksums and restores it into an empty DATA_DIR.
 *   npm run restore -- --requeue [--database-url <url>]
 *     services stack, after pg_restore into a cluster whose RabbitMQ queues are empty (every node
 *     stopped): envelopes the log marks as copied to offline queues become pending again, so they
 *     are delivered or queued anew. The URL defaults to $DATABASE_URL.
 *
 * Exit 0 done (or `--help`: the usage on stdout), 1 refused or failed (the message says why), 2 bad usage.
 */
import { readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { openDatabase } from "../db/index.ts";
import { PostgresEnvelopeLog } from "../messaging/postgres-envelope-log.ts";
import { restoreEmbeddedBackup } from "./index.ts";

const USAGE = `usage:
  npm run backup -- [--admin-url <url>] [--ca <file>]
      online snapshot of a running embedded node (token: $ADMIN_TOKEN or $ADMIN_TOKEN_FILE;
      URL default: from $ADMIN_HOST/$ADMIN_PORT/$ADMIN_TLS_CERT_FILE, else http://127.0.0.1:9090)
  npm run restore -- <backup directory> [--data-dir <dir>]
      restore into an empty data directory (default: $DATA_DIR, else ./data), node stopped
  npm run restore -- --requeue [--database-url <url>]
      services stack, every node stopped, RabbitMQ queues empty: redeliver what the log says was
      in offline queues (URL default: $DATABASE_URL)`;

/** A file the command was told to read; throws one line naming where it was named (`what`) and why it failed. */
function readNamed(what: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new Error(`${what}: cannot read it: ${(error as Error).message}`);
  }
}

/** The admin token: $ADMIN_TOKEN, else the trimmed content of $ADMIN_TOKEN_FILE; throws if that file cannot be read. */
function adminToken(): string | undefined {
  if (process.env.ADMIN_TOKEN) return process.env.ADMIN_TOKEN;
  if (process.env.ADMIN_TOKEN_FILE) return readNamed("ADMIN_TOKEN_FILE", process.env.ADMIN_TOKEN_FILE).trim();
  return undefined;
}

/**
 * Where `npm run backup` finds the admin RPC without `--admin-url`: the listener the node's own
 * variables name (`ADMIN_HOST`, default 127.0.0.1, a wildcard address read as 127.0.0.1;
 * `ADMIN_PORT`, default 9090; https when `ADMIN_TLS_CERT_FILE` is set), so an operator who moved
 * the admin port does not have to repeat it.
 */
export function defaultAdminUrl(env: NodeJS.ProcessEnv = process.env): string {
  const named = env.ADMIN_HOST;
  const host =
    !named || named === "0.0.0.0" || named === "::"
      ? "127.0.0.1"
      : named.includes(":")
        ? `[${named}]`
        : named;
  const scheme = env.ADMIN_TLS_CERT_FILE ? "https" : "http";
  return `${scheme}://${host}:${env.ADMIN_PORT || "9090"}`;
}

/**
 * After a restore into `dataDir`: a warning when the erasure ledger a node started there would read
 * (`$ERASURE_LEDGER_FILE`, else `<dataDir>/erasure-ledger`) is missing or empty, since the node
 * would then not erase again the accounts erased after the backup; undefined when it holds lines.
 */
export function ledgerNote(dataDir: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const path = resolve(env.ERASURE_LEDGER_FILE || join(dataDir, "erasure-ledger"));
  let size = 0;
  try {
    size = statSync(path).size;
  } catch {
    // Missing: said below.
  }
  if (size > 0) return undefined;
  return `note: the erasure ledger ${path} is missing or empty. If any account was erased after this backup, start the node with ERASURE_LEDGER_FILE set to the ledger you kept outside the backups (a node that ran with the default has it at <its DATA_DIR>/erasure-ledger), or that account comes back (README, "Backup and restore")`;
}

/**
 * What `npm run backup` prints when the node answers other than 201: `backup refused: <status>
 * <code>: <message>` from the admin RPC's error body (docs/PROTOCOL.md, errors; the raw body when it
 * is not one), then, for a 401, what to do: a node started without `ADMIN_TOKEN` refuses every
 * admin call (README's first `npm start` has none) and must be restarted with one; otherwise the
 * token given here is not the node's.
 */
export function refusal(status: number, body: string): string {
  let code: string | undefined;
  let message: string | undefined;
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (typeof parsed.error?.code === "string") code = parsed.error.code;
    if (typeof parsed.error?.message === "string") message = parsed.error.message;
  } catch {
    // Not the admin RPC's error shape (a proxy's page): shown as it came.
  }
  const said = code && message ? `${code}: ${message}` : body;
  let hint = "";
  if (status === 401 && message?.includes("ADMIN_TOKEN is not set"))
    hint =
      '\nthe node runs without ADMIN_TOKEN, so its admin RPC refuses every call: restart the node with ADMIN_TOKEN set, and give this command the same value (ADMIN_TOKEN or ADMIN_TOKEN_FILE); make one with `openssl rand -hex 24` (README, "Backup and restore")';
  else if (status === 401)
    hint = "\nthe token given (ADMIN_TOKEN or ADMIN_TOKEN_FILE) is not the node's ADMIN_TOKEN";
  return `backup refused: ${status} ${said}${hint}`;
}

/** Runs one command; resolves with the exit code. Output goes to stdout, problems to stderr. */
export async function runBackupCli(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  const [command, ...rest] = argv;
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        "admin-url": { type: "string", default: defaultAdminUrl() },
        ca: { type: "string" },
        "data-dir": { type: "string" },
        requeue: { type: "boolean", default: false },
        "database-url": { type: "string" },
      },
    });
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (command === "backup" && positionals.length === 0) {
    // Files first, so a missing one is named as such, not reported as a server that could not be reached.
    let token: string | undefined;
    let ca: string | undefined;
    try {
      token = adminToken();
      ca = values.ca ? readNamed("--ca", String(values.ca)) : undefined;
    } catch (error) {
      console.error((error as Error).message);
      return 2;
    }
    if (!token) {
      console.error(
        `no admin token: set ADMIN_TOKEN or ADMIN_TOKEN_FILE to the node's ADMIN_TOKEN (a node started without one refuses every admin call: restart it with ADMIN_TOKEN set)\n${USAGE}`,
      );
      return 2;
    }
    const url = new URL("/admin/v1/backups", String(values["admin-url"]));
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
        ...(ca ? { tls: { ca } } : {}),
      });
      const body = await res.text();
      if (res.status !== 201) {
        console.error(refusal(res.status, body));
        return 1;
      }
      console.log(body);
      return 0;
    } catch (error) {
      console.error(`could not reach ${url.origin}: ${(error as Error).message}`);
      return 1;
    }
  }
  if (command === "restore" && values.requeue && positionals.length === 0) {
    const url = values["database-url"] ?? process.env.DATABASE_URL;
    if (!url) {
      console.error(`no database: pass --database-url or set DATABASE_URL\n${USAGE}`);
      return 2;
    }
    try {
      const database = await openDatabase({ databaseUrl: String(url), dataDir: null, poolSize: 1 });
      try {
        const requeued = await new PostgresEnvelopeLog(database.db).requeueQueued();
        console.log(JSON.stringify({ requeued }));
      } finally {
        await database.close();
      }
      return 0;
    } catch (error) {
      console.error(`requeue failed: ${(error as Error).message}`);
      return 1;
    }
  }
  if (command === "restore" && !values.requeue && positionals.length === 1) {
    const dataDir = resolve(String(values["data-dir"] ?? process.env.DATA_DIR ?? "./data"));
    try {
      const manifest = await restoreEmbeddedBackup(resolve(String(positionals[0])), dataDir);
      console.log(JSON.stringify({ restored: manifest.name, createdAt: manifest.createdAt, dataDir }));
      const note = ledgerNote(dataDir);
      if (note) console.error(note);
      return 0;
    } catch (error) {
      console.error(`restore refused: ${(error as Error).message}`);
      return 1;
    }
  }
  console.error(USAGE);
  return 2;
}

if (import.meta.main) process.exit(await runBackupCli(process.argv.slice(2)));
