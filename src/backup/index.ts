import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Elysia } from "elysia";
import { lockDataDir } from "../config/data-dir-lock.ts";
import type { Database } from "../db/index.ts";
import { installedPgliteVersion } from "../db/pglite-template.ts";
import { DomainError } from "../errors/index.ts";
import type { EnvelopeLog } from "../messaging/envelope-log.ts";
import type { Logger } from "../observability/logger.ts";

/** The version of the backup layout below; `restoreEmbeddedBackup` refuses others. */
export const BACKUP_FORMAT = 1;
const PGLITE_FILE = "pglite.tar.gz";
const LOG_FILE = "envelopes.db";
const MANIFEST_FILE = "manifest.json";
/** The largest manifest `readBackup` reads: the backup command writes well under 1 KiB. */
const MAX_MANIFEST_BYTES = 64 * 1024;
const DAY_MS = 86_400_000;
/** A `.partial` directory older than this, with no backup running, is a crashed backup's remains. */
const PARTIAL_GRACE_MS = 3_600_000;
/**
 * The names `take()` gives: `clearbox-backup-<ISO time without - : .>-<node id>`, `.partial` while
 * written. Only directories so named are ever removed by `prune`.
 */
const BACKUP_NAME =
  /^clearbox-backup-(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})Z-[A-Za-z0-9_.:-]{1,64}?(\.partial)?$/;

/** What one `BackupService.prune` removed: backup directory names, and crashed backups' `.partial` ones. */
export interface BackupPruneResult {
  removed: string[];
  partials: string[];
}

/** `manifest.json` of a backup directory. */
export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  /** The backup's directory name, e.g. `clearbox-backup-20261129T161500123Z-node-1`. */
  name: string;
  createdAt: string;
  nodeId: string;
  /** The PGlite version that wrote the dump (another version may not read its catalog). */
  pglite: string;
  /** Each file's size in bytes and SHA-256 (hex), checked before a restore. */
  files: Record<string, { bytes: number; sha256: string }>;
}

/** SHA-256 (hex) of the file at `path`, read 1 MiB at a time (a backup may be larger than memory allows). */
function sha256(path: string): string {
  const hash = createHash("sha256");
  const chunk = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(path, "r");
  try {
    for (let n = readSync(fd, chunk); n > 0; n = readSync(fd, chunk)) hash.update(chunk.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/**
 * Online backups of the embedded default: a consistent snapshot of PGlite (`dumpDataDir`, between
 * queries, after a CHECKPOINT) and of the SQLite message log (`VACUUM INTO` on its writer thread,
 * between group commits), never a copy of live files. Each backup is a new directory under
 * BACKUP_DIR, written as `<name>.partial` and renamed once complete, with a manifest of checksums.
 *
 * The two snapshots are taken one after the other, the log first: the database copy may hold
 * accounts and devices newer than the log copy, never the reverse; an envelope acked between the
 * two is delivered again after a restore (clients drop repeated message ids). The services stack
 * (PostgreSQL) is backed up with pg_dump instead; README, "Backup and restore".
 */
export class BackupService {
  private running: Promise<BackupManifest> | undefined;

  constructor(
    private readonly deps: {
      database: Pick<Database, "kind" | "dumpDataDir">;
      log: Pick<EnvelopeLog, "kind" | "backup">;
      dir: string;
      nodeId: string;
      logger: Logger;
      clock?: () => Date;
    },
  ) {}

  /**
   * Takes one backup; resolves with its manifest and directory. Refused with `conflict` while
   * another one runs, and with `invalid` on the services stack (PostgreSQL, MongoDB: pg_dump).
   */
  create(): Promise<BackupManifest & { path: string }> {
    const { database, log } = this.deps;
    if (!database.dumpDataDir || !log.backup) {
      throw new DomainError(
        "invalid",
        `online snapshots are for the embedded default; this node uses ${database.kind} and the ${log.kind} log: back them up with their own tools (README, Backup and restore)`,
      );
    }
    if (this.running) throw new DomainError("conflict", "a backup is already running on this node");
    const running = this.take();
    this.running = running;
    return running.finally(() => {
      this.running = undefined;
    }) as Promise<BackupManifest & { path: string }>;
  }

  /**
   * Storage limitation for backups (GDPR Art. 5(1)(e)): removes every backup directory in the
   * backup directory whose name (`clearbox-backup-<time>-<node>`) is more than `retentionDays`
   * whole days older than `nowMs` (ms since the epoch), and every `.partial` one (a backup that
   * crashed half-written) older than an hour while no backup runs here. Anything else there (other
   * names, files, symbolic links) is left alone; a missing directory removes nothing. Logs one line
   * with the names when it removed any. Called by the retention job (BACKUP_RETENTION_DAYS).
   * Throws what the file system throws (e.g. EACCES) after removing what it could before.
   */
  prune(retentionDays: number, nowMs: number): BackupPruneResult {
    const { dir, logger } = this.deps;
    const result: BackupPruneResult = { removed: [], partials: [] };
    if (!existsSync(dir)) return result;
    for (const name of readdirSync(dir)) {
      const named = backupNameTime(name);
      if (!named) continue;
      const path = join(dir, name);
      // lstat: a symbolic link named like a backup is not one this service wrote; never follow it.
      if (!lstatSync(path).isDirectory()) continue;
      if (named.partial) {
        if (this.running || nowMs - named.at < PARTIAL_GRACE_MS) continue;
        rmSync(path, { recursive: true, force: true });
        result.partials.push(name);
      } else if (nowMs - named.at > retentionDays * DAY_MS) {
        rmSync(path, { recursive: true, force: true });
        result.removed.push(name);
      }
    }
    if (result.removed.length > 0 || result.partials.length > 0) {
      logger.info({ backups: { ...result, retentionDays } }, "backups pruned");
    }
    return result;
  }

  private async take(): Promise<BackupManifest & { path: string }> {
    const { database, log, dir, nodeId, logger } = this.deps;
    const started = performance.now();
    const createdAt = (this.deps.clock ?? (() => new Date()))();
    const name = `clearbox-backup-${createdAt.toISOString().replace(/[-:.]/g, "")}-${nodeId}`;
    const path = join(dir, name);
    const partial = `${path}.partial`;
    mkdirSync(partial, { recursive: true, mode: 0o700 });
    try {
      // The log first: the database copy is then at least as new as every envelope's account.
      await (log.backup as (path: string) => Promise<void>)(join(partial, LOG_FILE));
      const dump = await (database.dumpDataDir as () => Promise<Blob>)();
      await Bun.write(join(partial, PGLITE_FILE), dump);
      const files: BackupManifest["files"] = {};
      for (const file of [PGLITE_FILE, LOG_FILE]) {
        const at = join(partial, file);
        files[file] = { bytes: statSync(at).size, sha256: sha256(at) };
      }
      const manifest: BackupManifest = {
        format: BACKUP_FORMAT,
        name,
        createdAt: createdAt.toISOString(),
        nodeId,
        pglite: installedPgliteVersion(),
        files,
      };
      await Bun.write(join(partial, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
      // Every account, key bundle and queued envelope: the owner's only, as the data directory's
      // files, also once the backup is copied out of its 0700 directory (`cp` keeps the mode).
      for (const file of [PGLITE_FILE, LOG_FILE, MANIFEST_FILE]) chmodSync(join(partial, file), 0o600);
      renameSync(partial, path);
      logger.info(
        {
          backup: { name, bytes: files[PGLITE_FILE].bytes + files[LOG_FILE].bytes },
          ms: Math.round(performance.now() - started),
        },
        "backup written",
      );
      return { ...manifest, path };
    } catch (error) {
      rmSync(partial, { recursive: true, force: true });
      throw error;
    }
  }
}

/**
 * The time a backup directory's name records (when `take()` started it), or undefined when the name
 * is not one `take()` gives. `name` is a bare directory name, e.g.
 * `clearbox-backup-20261129T161500123Z-node-1` → 2026-11-29T16:15:00.123Z.
 */
export function backupNameTime(name: string): { at: number; partial: boolean } | undefined {
  const match = BACKUP_NAME.exec(name);
  if (!match) return undefined;
  const [, y, mo, d, h, mi, sec, ms, partial] = match;
  const at = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(sec), Number(ms));
  return Number.isNaN(at) ? undefined : { at, partial: partial !== undefined };
}

/** `POST /admin/v1/backups` → 201 with the manifest and the directory it was written to. */
export function backupAdminRoutes(backups: BackupService) {
  return new Elysia({ name: "clearbox.backup-admin" }).post("/admin/v1/backups", async ({ set }) => {
    const manifest = await backups.create();
    set.status = 201;
    return manifest;
  });
}

/** Reads and checks a backup directory's manifest and checksums; throws naming what is wrong. */
export function readBackup(backupDir: string): BackupManifest {
  const manifestPath = join(backupDir, MANIFEST_FILE);
  if (!existsSync(manifestPath))
    throw new Error(`${backupDir} has no ${MANIFEST_FILE}: not a complete backup`);
  // As for the backup's files: a manifest linked to /dev/zero was read until memory ran out (and a
  // FIFO blocked the restore for good). The backup command writes a few hundred bytes.
  const stat = lstatSync(manifestPath);
  if (!stat.isFile()) throw new Error(`${MANIFEST_FILE} is not a regular file`);
  if (stat.size > MAX_MANIFEST_BYTES) throw new Error(`${MANIFEST_FILE} is larger than a manifest`);
  let manifest: BackupManifest;
  try {
    manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as BackupManifest;
  } catch {
    throw new Error(`${MANIFEST_FILE} is not JSON: damaged or not a backup`);
  }
  if (typeof manifest !== "object" || manifest === null) {
    throw new Error(`${MANIFEST_FILE} is not a manifest: damaged or not a backup`);
  }
  if (manifest.format !== BACKUP_FORMAT) {
    throw new Error(`backup format ${manifest.format} is not ${BACKUP_FORMAT}, the one this version reads`);
  }
  for (const file of [PGLITE_FILE, LOG_FILE]) {
    const expected = manifest.files?.[file];
    const at = join(backupDir, file);
    if (!expected || !existsSync(at)) throw new Error(`backup file ${file} is missing`);
    // A link or a device (a `pglite.tar.gz` pointing at /dev/zero has size 0, and hashing it reads
    // until memory runs out) is not a file this command wrote.
    if (!lstatSync(at).isFile()) throw new Error(`backup file ${file} is not a regular file`);
    if (statSync(at).size !== expected.bytes || sha256(at) !== expected.sha256) {
      throw new Error(`backup file ${file} does not match its checksum: damaged or changed`);
    }
  }
  const pglite = installedPgliteVersion();
  if (manifest.pglite !== pglite) {
    throw new Error(`the backup was written by PGlite ${manifest.pglite}; this version runs ${pglite}`);
  }
  return manifest;
}

/**
 * Restores a backup of the embedded default into `dataDir`, with the node stopped: checks the
 * manifest and checksums (the manifest and both files must be regular files, not links), refuses a data directory that already holds a database or a log (move it
 * away first) and one a live process holds (`lockDataDir`: `DataDirLockedError` naming its pid; the
 * lock is held until the restore ends, so a node started meanwhile is refused), loads the PGlite
 * dump into `dataDir/pglite` and copies the log to `dataDir/envelopes.db`. The node's next start applies newer migrations and replays the erasure
 * ledger (docs/GDPR.md).
 */
export async function restoreEmbeddedBackup(backupDir: string, dataDir: string): Promise<BackupManifest> {
  const manifest = readBackup(resolve(backupDir));
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  // Held until the restore is done: a node starting on this directory meanwhile is refused, and a
  // directory a running node holds is refused here, whatever it holds yet.
  const lock = lockDataDir(dataDir);
  try {
    const pgliteDir = join(dataDir, "pglite");
    const logPath = join(dataDir, LOG_FILE);
    if ((existsSync(pgliteDir) && readdirSync(pgliteDir).length > 0) || existsSync(logPath)) {
      throw new Error(
        `${dataDir} already holds a database or a message log: restore into an empty directory`,
      );
    }
    mkdirSync(pgliteDir, { recursive: true, mode: 0o700 });
    const dump = new Blob([readFileSync(join(backupDir, PGLITE_FILE))]);
    const client = await PGlite.create(pgliteDir, { loadDataDir: dump });
    await client.query("select 1");
    await client.close();
    copyFileSync(join(backupDir, LOG_FILE), logPath);
    // copyFile keeps the source's mode: a backup an earlier version wrote 0644 stays out of the data dir.
    chmodSync(logPath, 0o600);
    return manifest;
  } finally {
    lock.release();
  }
}
