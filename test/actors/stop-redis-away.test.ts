import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Redis } from "ioredis";
import { ActorSystem, InMemoryTransport, RedisMembership } from "../../actors/index.ts";
import { OwnRedis } from "../support/own-redis.ts";

// A node stopped while Redis is away cannot leave gracefully (its drain announces `draining` in
// Redis). Before, stop() rejected at the drain and left the rest running: the heartbeat, the inbox
// consumer, the membership's connections, which re-registered the stopped node once Redis was back.

const HEARTBEAT_MS = 100;
let redis: OwnRedis;

beforeAll(async () => {
  redis = await OwnRedis.start();
});

afterAll(async () => {
  await redis.stop();
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("ActorSystem.stop while Redis is away", () => {
  test("rejects, yet stops everything: the node does not come back when Redis does", async () => {
    const prefix = "stop-away:cluster";
    const membership = new RedisMembership({
      nodeId: "away-a",
      redis: redis.url,
      prefix,
      heartbeatMs: HEARTBEAT_MS,
      ttlMs: HEARTBEAT_MS * 3,
    });
    const system = new ActorSystem({
      nodeId: "away-a",
      membership,
      transport: new InMemoryTransport("away-a"),
    });
    system.register("echo", () => ({ receive: (message) => message }));
    await system.start();
    expect(await system.ask("echo:1", "hello")).toBe("hello");

    await redis.kill();
    const stopped = await system.stop().then(
      () => "stopped",
      (error: unknown) => error,
    );
    // The drain could not be announced: the caller hears why.
    expect(stopped).toBeInstanceOf(Error);
    // Stopped all the same: nothing is routed any more.
    expect(await system.tell("echo:1", "late").catch((error: unknown) => (error as Error).name)).toBe(
      "NodeStoppedError",
    );

    await redis.restart();
    // Several heartbeats and reconnect attempts of a membership left running.
    await sleep(HEARTBEAT_MS * 10);
    const probe = new Redis(redis.url, { maxRetriesPerRequest: 2 });
    try {
      expect(await probe.smembers(`${prefix}:nodes`)).toEqual([]);
      expect(await probe.get(`${prefix}:member:away-a`)).toBeNull();
      // Only the probe is connected: the membership's client and subscriber are gone.
      const clients = (await probe.client("LIST")) as string;
      expect(clients.trim().split("\n")).toHaveLength(1);
    } finally {
      probe.disconnect();
    }
  });
});
