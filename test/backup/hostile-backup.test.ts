/**
 * `readBackup` (what `npm run restore` checks first) against a backup directory it did not write:
 * a file that is a link to a device, or a link at all, is refused by name before anything is read.
 * `/dev/zero` has size 0, so a manifest giving 0 bytes passed the size check, and hashing it read
 * until memory ran out (ENOMEM after ~20 s here); the manifest itself was read the same way. No
 * node or database is involved.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BACKUP_FORMAT, readBackup } from "../../src/backup/index.ts";
import { installedPgliteVersion } from "../../src/db/pglite-template.ts";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function backupDir(pglite: (path: string) => void, pgliteEntry: { bytes: number; sha256: string }): string {
  const dir = mkdtempSync(join(tmpdir(), "cbt-hostile-backup-"));
  dirs.push(dir);
  const log = Buffer.from("not a real log, but its checksum matches");
  writeFileSync(join(dir, "envelopes.db"), log);
  pglite(join(dir, "pglite.tar.gz"));
  const manifest = {
    format: BACKUP_FORMAT,
    name: "clearbox-backup-test",
    createdAt: new Date().toISOString(),
    nodeId: "node-test",
    pglite: installedPgliteVersion(),
    files: {
      "pglite.tar.gz": pgliteEntry,
      "envelopes.db": { bytes: log.length, sha256: createHash("sha256").update(log).digest("hex") },
    },
  };
  writeFileSync(join(dir, "manifest.json"), JSON.stringify(manifest));
  return dir;
}

const EMPTY_SHA256 = createHash("sha256").digest("hex");

describe("a backup directory the backup command did not write", () => {
  test("a file that is a link to /dev/zero is refused by name, never read", () => {
    const dir = backupDir((path) => symlinkSync("/dev/zero", path), { bytes: 0, sha256: EMPTY_SHA256 });
    expect(() => readBackup(dir)).toThrow("backup file pglite.tar.gz is not a regular file");
  });

  test("a link to a regular file whose checksum matches is refused too", () => {
    const target = join(mkdtempSync(join(tmpdir(), "cbt-hostile-target-")), "elsewhere");
    dirs.push(target.slice(0, target.lastIndexOf("/")));
    writeFileSync(target, "");
    const dir = backupDir((path) => symlinkSync(target, path), { bytes: 0, sha256: EMPTY_SHA256 });
    expect(() => readBackup(dir)).toThrow("backup file pglite.tar.gz is not a regular file");
  });

  test("regular files are hashed in full: a matching one passes, one changed byte is damage", () => {
    const body = Buffer.alloc(3 * (1 << 20) + 17, 7);
    const sha256 = createHash("sha256").update(body).digest("hex");
    const good = backupDir((path) => writeFileSync(path, body), { bytes: body.length, sha256 });
    expect(readBackup(good).name).toBe("clearbox-backup-test");
    body[body.length - 1] = 8;
    const bad = backupDir((path) => writeFileSync(path, body), { bytes: body.length, sha256 });
    expect(() => readBackup(bad)).toThrow("pglite.tar.gz does not match its checksum");
  });

  test("a manifest that is a link to /dev/zero is refused by name, never read", () => {
    const dir = backupDir((path) => writeFileSync(path, ""), { bytes: 0, sha256: EMPTY_SHA256 });
    rmSync(join(dir, "manifest.json"));
    symlinkSync("/dev/zero", join(dir, "manifest.json"));
    expect(() => readBackup(dir)).toThrow("manifest.json is not a regular file");
  });

  test("a manifest that is a link to a manifest elsewhere is refused too", () => {
    const dir = backupDir((path) => writeFileSync(path, ""), { bytes: 0, sha256: EMPTY_SHA256 });
    const elsewhere = mkdtempSync(join(tmpdir(), "cbt-hostile-target-"));
    dirs.push(elsewhere);
    renameSync(join(dir, "manifest.json"), join(elsewhere, "manifest.json"));
    symlinkSync(join(elsewhere, "manifest.json"), join(dir, "manifest.json"));
    expect(() => readBackup(dir)).toThrow("manifest.json is not a regular file");
  });

  test("a manifest that is not a JSON object, or far larger than one, is refused as such", () => {
    const dir = backupDir((path) => writeFileSync(path, ""), { bytes: 0, sha256: EMPTY_SHA256 });
    writeFileSync(join(dir, "manifest.json"), "null");
    expect(() => readBackup(dir)).toThrow("manifest.json is not a manifest");
    writeFileSync(join(dir, "manifest.json"), "{");
    expect(() => readBackup(dir)).toThrow("manifest.json is not JSON");
    writeFileSync(join(dir, "manifest.json"), `${" ".repeat(1 << 20)}{}`);
    expect(() => readBackup(dir)).toThrow("manifest.json is larger than a manifest");
  });
});
