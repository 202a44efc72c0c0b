import { createHash } from "node:crypto";
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/** What a ledger line starts with: the hash of an erased account's id (64 hex digits). */
const LINE = /^([0-9a-f]{64}) (\S+)$/;

/**
 * The erasure ledger: an append-only file with one line per requested erasure,
 * `<sha256("clearbox-erased-account:" + userId)> <ISO time>`. It lives outside the backups (its own
 * storage, ERASURE_LEDGER_FILE), so restoring an older backup cannot roll it back; at start-up the
 * node erases again every account of its database whose hash the ledger lists (docs/GDPR.md,
 * "Backups"). The ledger names nobody by itself: user ids are random UUIDs (122 bits), so the hash
 * cannot be reversed by trying ids, and it only matches an account that a restored backup brings back.
 */
export class ErasureLedger {
  constructor(readonly path: string) {}

  /** The ledger key of an account id (lower-case UUID). */
  static key(userId: string): string {
    return createHash("sha256").update(`clearbox-erased-account:${userId.toLowerCase()}`).digest("hex");
  }

  /** Appends the account's line and fsyncs it before returning, so a crash right after keeps it. */
  record(userId: string, at: Date = new Date()): void {
    mkdirSync(dirname(this.path), { recursive: true });
    const fd = openSync(this.path, "a", 0o600);
    try {
      writeSync(fd, `${ErasureLedger.key(userId)} ${at.toISOString()}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The keys the ledger lists (empty when the file does not exist yet). Throws naming the first
   * malformed line: a damaged ledger must stop the start-up, not be half replayed.
   */
  keys(): Set<string> {
    const keys = new Set<string>();
    if (!existsSync(this.path)) return keys;
    const lines = readFileSync(this.path, "utf8").split("\n");
    lines.forEach((line, index) => {
      if (line === "") return;
      const match = LINE.exec(line);
      if (!match)
        throw new Error(`erasure ledger ${this.path}: line ${index + 1} is not "<sha256 hex> <time>"`);
      keys.add(match[1]);
    });
    return keys;
  }
}
