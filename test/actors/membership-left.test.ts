import { afterAll, expect, test } from "bun:test";
import { Redis } from "ioredis";
import { RedisMembership } from "../../actors/index.ts";
import { deleteRedisPrefix, TEST_REDIS_URL, uniqueRedisPrefix } from "../support/redis.ts";
import { until } from "./cluster-harness.ts";

const prefix = uniqueRedisPrefix();
afterAll(() => deleteRedisPrefix(prefix));

const stats = () => ({ actors: 0, connections: 0 });

test("a node heard leaving that is later seen alive again, then dies, is a death: not reported as left", async () => {
  const a = new RedisMembership({ nodeId: "a", redis: TEST_REDIS_URL, prefix, heartbeatMs: 200 });
  const x = new RedisMembership({ nodeId: "x", redis: TEST_REDIS_URL, prefix, heartbeatMs: 200 });
  const raw = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 2 });
  try {
    await a.join({ address: "a:1" }, stats);
    await x.join({ address: "x:1" }, stats);
    await until(() => a.members().some((m) => m.nodeId === "x"), 10_000, "a sees x");
    // A graceful stop that stays registered (its inbox was not empty).
    await x.leave();
    await until(() => a.leftNodes().includes("x"), 10_000, "a hears x leave");
    // x starts again under its id, and a misses its `join` (a's subscription was down then): what
    // a sees is x's member key back.
    const member = {
      nodeId: "x",
      address: "x:2",
      status: "up",
      actors: 0,
      connections: 0,
      startedAt: Date.now(),
    };
    await raw.set(`${prefix}:member:x`, JSON.stringify(member), "PX", 60_000);
    await a.refresh();
    expect(a.members().some((m) => m.nodeId === "x")).toBe(true);
    // Then x dies: its key is gone without a leave.
    await raw.del(`${prefix}:member:x`);
    await a.refresh();
    expect(a.deadNodes()).toContain("x");
    expect(a.leftNodes()).toEqual([]);
  } finally {
    raw.disconnect();
    await a.leave({ forget: true });
  }
}, 30_000);
