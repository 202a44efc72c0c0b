import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { flock } from "./libc.ts";

/** The lock file in DATA_DIR: never removed, its content names the last process that held it. */
export const LOCK_FILE = "clearbox.lock";

const LOCK_EX = 2;
const LOCK_NB = 4;

/** Held by another live process: the message names the directory and that process. */
export class DataDirLockedError extends Error {
  constructor(
    readonly dir: string,
    readonly holderPid: number | null,
  ) {
    super(
      `${dir} is in use by ${holderPid === null ? "another process" : `process ${holderPid}`} (lock file ${join(dir, LOCK_FILE)}): stop it first, or use another directory`,
    );
    this.name = "DataDirLockedError";
  }
}

/** An exclusive hold on a data directory; `release` gives it up (a process's exit does too). */
export interface DataDirLock {
  readonly path: string;
  release(): void;
}

/** The pid a lock file names (its first line), or `null` when it names none. */
function holderOf(path: string): number | null {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8").split("\n")[0] ?? "", 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** True when a process with this pid exists (signal 0: EPERM means it exists under another user). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes the exclusive lock on `dir` (which must exist) for this process: `flock(2)` (`LOCK_EX |
 * LOCK_NB`) on `dir/clearbox.lock`, which the kernel releases when the process ends in any way
 * (exit, crash, `kill -9`), so a dead holder's lock is taken over with nothing to clean up; the
 * file then gets this process's pid, start time (ISO 8601) and host name, one a line, for the
 * message another process gets. Where no libc can be loaded for `flock`, the pid check of
 * PostgreSQL's `postmaster.pid` stands in: the lock is refused while the pid the file names is
 * alive and not this process. The file is never deleted (deleting a locked file would let a third
 * process lock a new one beside the old). PGlite, the SQLite envelope log and the erasure ledger
 * are single-writer files: two processes on one DATA_DIR corrupted them (a second `npm start`, a
 * restore into a running node's directory, two nodes given the same volume).
 * Throws {@link DataDirLockedError} when another live process holds it; a file-system error as is.
 */
export function lockDataDir(dir: string): DataDirLock {
  const path = join(dir, LOCK_FILE);
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    if (flock) {
      if (flock(fd, LOCK_EX | LOCK_NB) !== 0) throw new DataDirLockedError(dir, holderOf(path));
    } else {
      const holder = holderOf(path);
      if (holder !== null && holder !== process.pid && alive(holder))
        throw new DataDirLockedError(dir, holder);
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n${new Date().toISOString()}\n${hostname()}\n`, 0);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  let held = true;
  return {
    path,
    release() {
      if (!held) return;
      held = false;
      closeSync(fd);
    },
  };
}
