import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { backupNameTime } from "../../src/backup/index.ts";
import { ConfigError, loadConfig } from "../../src/config/index.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

const DAY = 86_400_000;

/** The directory name a backup taken at `at` by node `nodeId` gets (BackupService.take). */
function nameAt(at: number, nodeId = "node-1"): string {
  return `clearbox-backup-${new Date(at).toISOString().replace(/[-:.]/g, "")}-${nodeId}`;
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

describe("backup names", () => {
  test("the time a backup's name records is read back, partial or not; other names are not backups", () => {
    const at = Date.UTC(2026, 10, 29, 16, 15, 0, 123);
    expect(backupNameTime(nameAt(at))).toEqual({ at, partial: false });
    expect(backupNameTime(`${nameAt(at, "host.example-8080")}.partial`)).toEqual({ at, partial: true });
    expect(backupNameTime("clearbox-backup-latest")).toBeUndefined();
    expect(backupNameTime(`${nameAt(at)}/../x`)).toBeUndefined();
    expect(backupNameTime(`old-${nameAt(at)}`)).toBeUndefined();
  });

  test("BACKUP_RETENTION_DAYS defaults to RETENTION_DAYS and is refused outside 1-3650", () => {
    expect(loadConfig({ RETENTION_DAYS: "12" }).backupRetentionDays).toBe(12);
    expect(loadConfig({ RETENTION_DAYS: "12", BACKUP_RETENTION_DAYS: "3" }).backupRetentionDays).toBe(3);
    expect(() => loadConfig({ BACKUP_RETENTION_DAYS: "0" })).toThrow(ConfigError);
    expect(() => loadConfig({ BACKUP_RETENTION_DAYS: "two" })).toThrow(ConfigError);
  });
});

describe("the retention job prunes BACKUP_DIR", () => {
  const scratch = mkdtempSync(join(tmpdir(), "clearbox-backup-prune-"));
  const backupDir = join(scratch, "backups");
  const outside = join(scratch, "outside");
  let node: TestNode;
  const now = Date.now();
  const old = nameAt(now - 3 * DAY);
  const crashed = `${nameAt(now - 2 * 3_600_000)}.partial`;
  const linked = nameAt(now - 5 * DAY, "linked");
  const foreign = "clearbox-backup-keep-me";
  let fresh: string;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      env: {
        BACKUP_DIR: backupDir,
        ERASURE_LEDGER_FILE: join(scratch, "ledger"),
        RETENTION_DAYS: "30",
        BACKUP_RETENTION_DAYS: "2",
        RETENTION_INTERVAL_SECONDS: "1",
      },
    });
    // A real backup, then a copy of it renamed three days into the past.
    const res = await fetch(`${node.adminUrl}/admin/v1/backups`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(201);
    fresh = ((await res.json()) as { name: string }).name;
    const second = await fetch(`${node.adminUrl}/admin/v1/backups`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(second.status).toBe(201);
    renameSync(join(backupDir, ((await second.json()) as { name: string }).name), join(backupDir, old));
    mkdirSync(join(backupDir, crashed));
    writeFileSync(join(backupDir, crashed, "envelopes.db"), "half written");
    // Not this service's: a link named like an old backup (its target must survive), another name.
    mkdirSync(outside);
    writeFileSync(join(outside, "precious"), "not a backup");
    symlinkSync(outside, join(backupDir, linked));
    mkdirSync(join(backupDir, foreign));
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(scratch, { recursive: true, force: true });
  });

  test("a backup older than BACKUP_RETENTION_DAYS and a crashed one go; a fresh one, links and other names stay", async () => {
    await waitFor(
      () => !existsSync(join(backupDir, old)) && !existsSync(join(backupDir, crashed)),
      "the retention pass to remove the old and the crashed backup",
    );
    expect(readdirSync(backupDir).sort()).toEqual([fresh, foreign, linked].sort());
    expect(existsSync(join(outside, "precious"))).toBe(true);
    expect(node.logs.some((line) => line.includes("backups pruned") && line.includes(old))).toBe(true);
    const metrics = await fetch(`${node.adminUrl}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(await metrics.text()).toMatch(/clearbox_retention_removals_total\{[^}]*store="backups"[^}]*\} 2/);
  });
});
