import { expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

test("with CB_STAGE_TRACE the harness and its node stamp every step of a sampled message's path, and the report reads them back", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cb-stage-trace-"));
  try {
    const run = await runToEnd(
      [process.execPath, "run", "src/loadtest/main.ts", "smoke", "--users", "4", "--messages", "300"],
      { cwd: ROOT, env: { ...process.env, CB_STAGE_TRACE: dir } },
    );
    expect(run.code).toBe(0);
    // One file per process: the harness and the node it spawned.
    expect(readdirSync(dir).filter((f) => f.endsWith(".trace")).length).toBeGreaterThanOrEqual(2);
    const report = await runToEnd([process.execPath, "run", "src/loadtest/stage-report.ts", dir], {
      cwd: ROOT,
    });
    expect(report.code).toBe(0);
    const phase = /last phase: (\d+) sampled messages over [\d.]+ s, (\d+) with every stage/.exec(
      report.stdout,
    );
    const sampled = Number(phase?.[1]);
    // About an eighth of 300 (the ids are random).
    expect(sampled).toBeGreaterThan(0);
    expect(sampled).toBeLessThan(300);
    // Every sampled message was delivered, so each has all nine stamps, from both processes.
    expect(Number(phase?.[2])).toBe(sampled);
    // The embedded log's group commit is traced too (its writes carry appends and acks).
    expect(report.stdout).toMatch(/ write writes, /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
