import { expect, test } from "bun:test";
import { resolve } from "node:path";
import { spawnRelay } from "../../src/loadtest/servers.ts";
import { runToEnd } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

test("a server the harness spawns runs a full collection when asked, answers with its JS heap, and keeps serving", async () => {
  const relay = await spawnRelay();
  try {
    const first = await relay.collectGarbage();
    const second = await relay.collectGarbage();
    for (const reading of [first, second]) {
      expect(reading.heapBytes).toBeGreaterThan(0);
      expect(reading.heapCapacityBytes).toBeGreaterThanOrEqual(reading.heapBytes);
      expect(reading.objects).toBeGreaterThan(0);
      expect(reading.types.Object).toBeGreaterThan(0);
    }
    const health = await fetch(new URL("/healthz", relay.url));
    expect(await health.text()).toBe("ok");
  } finally {
    await relay.stop();
  }
  expect(await relay.exited).toBe(0);
}, 60_000);

test("the connections scenario reports RSS and the JS heap per connection read after full collections", async () => {
  const run = await runToEnd(
    [process.execPath, "run", "src/loadtest/main.ts", "connections", "--connections", "40", "--json"],
    { cwd: ROOT },
  );
  expect(run.code).toBe(0);
  const summary = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "");
  for (const phase of [...summary.baseline, ...summary.phases]) {
    expect(phase.extra.connections).toBe(40);
    for (const key of [
      "marginalBytesPerConnection",
      "marginalBytesPerConnectionBeforeGc",
      "heapBytesPerConnection",
      "heapMarginalBytesPerConnection",
      "objectsPerConnection",
    ]) {
      expect(typeof phase.extra[key]).toBe("number");
    }
  }
  // Both servers' heaps, read after full collections, hold one ServerWebSocket per open socket.
  for (const system of ["relay", "clearbox"]) {
    expect(run.stderr).toMatch(
      new RegExp(`${system}: JS heap .* grown per connection: .*ServerWebSocket 1\\.0`),
    );
  }
}, 120_000);
