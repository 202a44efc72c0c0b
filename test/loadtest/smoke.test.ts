import { expect, test } from "bun:test";
import { resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

/** Runs the harness CLI as a user would; returns its exit code and output. */
function loadtest(args: string[]) {
  return runToEnd([process.execPath, "run", "src/loadtest/main.ts", ...args], { cwd: ROOT });
}

test("the smoke scenario against a node it spawns loses nothing, duplicates nothing, and ends with one JSON line", async () => {
  const run = await loadtest(["smoke", "--json", "--users", "4", "--messages", "300"]);
  expect(run.stderr).toContain("[clearbox"); // the live progress line
  expect(run.code).toBe(0);
  const last = run.stdout.trim().split("\n").at(-1) ?? "";
  const summary = JSON.parse(last);
  for (const key of [
    "scenario",
    "sent",
    "accepted",
    "delivered",
    "lost",
    "duplicated",
    "msgsPerSec",
    "latencyMs",
  ]) {
    expect(summary).toHaveProperty(key);
  }
  expect(Object.keys(summary.latencyMs)).toEqual(["p50", "p90", "p99", "max"]);
  expect(summary.scenario).toBe("smoke");
  expect(summary.sent).toBeGreaterThanOrEqual(300);
  expect(summary.accepted).toBe(summary.sent);
  expect(summary.delivered).toBe(summary.sent);
  expect(summary.lost).toBe(0);
  expect(summary.duplicated).toBe(0);
  expect(summary.msgsPerSec).toBeGreaterThan(0);
  expect(summary.latencyMs.p99).toBeGreaterThan(0);
  expect(summary.latencyMs.max).toBeGreaterThanOrEqual(summary.latencyMs.p99);
  // The harness started the node itself, so it read the server's memory from /proc.
  expect(summary.server.rssMb).toBeGreaterThan(0);
}, 60_000);

test("a fan-out run reports its CPU-seconds per 1,000 deliveries beside its member counts", async () => {
  const run = await loadtest([
    "fanout",
    "--json",
    "--no-progress",
    "--group-sizes",
    "3",
    "--group-messages",
    "2",
  ]);
  expect(run.code).toBe(0);
  const summary = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "");
  const [phase] = summary.phases;
  expect(phase.delivered).toBe(4);
  expect(phase.extra).toMatchObject({ members: 3, recipients: 2 });
  // The node's CPU over the deliveries (the scenario's own extra replaced it before).
  expect(typeof phase.extra.cpuSecondsPer1000).toBe("number");
}, 120_000);

test("an unknown scenario is refused with the usage and exit code 2", async () => {
  const run = await loadtest(["nonsense"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("usage: npm run loadtest");
});
