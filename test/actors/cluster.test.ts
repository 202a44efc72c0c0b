import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { ActorSystem } from "../../actors/index.ts";
import { CountingTransport, everyAcceptedProcessed, Load, TestCluster, until } from "./cluster-harness.ts";

/** Keys spread over the ring; enough that every node owns several. */
const KEYS = Array.from({ length: 60 }, (_, i) => `rec:k${i}`);

describe("three nodes over real Redis and RabbitMQ", () => {
  const cluster = new TestCluster();
  let a: ActorSystem;
  let b: ActorSystem;
  let c: ActorSystem;
  let counting: CountingTransport;

  beforeAll(async () => {
    a = await cluster.node("node-a", (transport) => {
      counting = new CountingTransport(transport);
      return counting;
    });
    b = await cluster.node("node-b");
    c = await cluster.node("node-c");
    await cluster.converged(["node-a", "node-b", "node-c"]);
  });

  afterAll(() => cluster.cleanup());

  test("every node computes the same owner, and a message sent from any node reaches the one active actor", async () => {
    for (const key of KEYS) {
      const owner = a.ownerOf(key);
      expect(b.ownerOf(key)).toBe(owner);
      expect(c.ownerOf(key)).toBe(owner);
    }
    for (const [index, key] of KEYS.entries()) {
      const sender = [a, b, c][index % 3];
      // The actor answers with the node it runs on.
      expect(await sender.ask<string>(key, { seq: -1 - index })).toBe(a.ownerOf(key));
    }
    for (const key of KEYS) expect(cluster.whereActive(key)).toEqual([a.ownerOf(key)]);
    const owners = new Set(KEYS.map((key) => a.ownerOf(key)));
    expect(owners.size).toBe(3);
  });

  test("tellMany sends one transfer per owning node, not one per actor", async () => {
    const fanOut = Array.from({ length: 300 }, (_, i) => `rec:fan${i}`);
    counting.transfers.clear();
    const before = cluster.processed.length;
    await a.tellMany(fanOut, { seq: 0 });
    await until(() => cluster.processed.length - before >= 300, 15_000, "fan-out delivery");
    expect(counting.transfers.get("node-b")).toBe(1);
    expect(counting.transfers.get("node-c")).toBe(1);
    const reached = new Set(cluster.processed.slice(before).map((p) => p.key));
    expect(reached.size).toBe(300);
  });

  test("the cluster view lists every member with its actor count and the ring size", async () => {
    await until(() => a.clusterView().nodes.every((n) => n.actors > 0), 15_000, "heartbeats with counts");
    const view = a.clusterView();
    expect(view.self).toBe("node-a");
    expect(view.nodes.map((n) => n.nodeId)).toEqual(["node-a", "node-b", "node-c"]);
    expect(view.ring.vnodes).toBe(3 * 512);
    const bView = view.nodes.find((n) => n.nodeId === "node-b");
    expect(bView?.actors).toBeGreaterThan(0);
  });

  test("a graceful drain hands every actor off with zero loss and never two activations at once", async () => {
    const drainedKeys = b.activeKeys();
    expect(drainedKeys.length).toBeGreaterThan(0);
    const load = new Load([a, c], KEYS, 10);
    await until(() => load.accepted.size > 300, 15_000, "load to flow");
    // Drain through another node, as the admin RPC does.
    await a.drain("node-b");
    await until(() => b.activeKeys().length === 0 && !a.ringMembers().includes("node-b"), 15_000, "drain");
    await cluster.converged(["node-a", "node-c"]);
    await until(() => load.accepted.size > 3000, 30_000, "load after drain");
    await load.stop();
    await everyAcceptedProcessed(cluster, load);
    expect(load.refused).toEqual([]);
    expect(cluster.doubleActivations).toEqual([]);
    expect(b.activeKeys()).toEqual([]);
    // Actors that lived on node-b now live on their new owners (reactivated by the handoff).
    for (const key of drainedKeys) {
      await until(() => cluster.whereActive(key).length === 1, 15_000, `${key} reactivated`);
      expect(cluster.whereActive(key)).toEqual([a.ownerOf(key)]);
    }
    expect(a.clusterView().nodes.find((n) => n.nodeId === "node-b")?.status).toBe("draining");
  }, 240_000);

  test("a joining node takes over its keys with zero loss and never two activations at once", async () => {
    cluster.mark("join test: load starts");
    const load = new Load([a, c], KEYS, 10);
    await until(() => load.accepted.size > 300, 15_000, "load to flow");
    cluster.mark("node-d starts");
    const d = await cluster.node("node-d");
    cluster.mark("node-d started");
    await cluster.converged(["node-a", "node-c", "node-d"]);
    cluster.mark("converged");
    await until(() => d.activeKeys().length > 0, 15_000, "node-d to host actors");
    const mark = load.accepted.size;
    await until(() => load.accepted.size > mark + 2000, 30_000, "load after join");
    await load.stop();
    cluster.mark(`load stopped, ${load.accepted.size} accepted`);
    await everyAcceptedProcessed(cluster, load);
    expect(cluster.doubleActivations).toEqual([]);
    for (const key of KEYS) expect(cluster.whereActive(key)).toEqual([a.ownerOf(key)]);
    expect(KEYS.some((key) => a.ownerOf(key) === "node-d")).toBe(true);
  }, 240_000);
});
