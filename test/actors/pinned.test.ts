import { afterEach, describe, expect, test } from "bun:test";
import {
  type ActorSystem,
  createActorNode,
  InMemoryMembership,
  InMemoryTransport,
  MembershipHub,
  TransportHub,
  UnknownNodeError,
} from "../../actors/index.ts";

const systems: ActorSystem[] = [];
afterEach(async () => {
  await Promise.all(systems.splice(0).map((s) => s.stop()));
});

/** Three in-process nodes sharing in-memory hubs; each registers a pinned `here` kind that reports its node. */
async function threeNodes() {
  const membershipHub = new MembershipHub();
  const transportHub = new TransportHub();
  const nodes = await Promise.all(
    ["a", "b", "c"].map(async (nodeId) => {
      const node = createActorNode({
        nodeId,
        membership: new InMemoryMembership(nodeId, membershipHub),
        transport: new InMemoryTransport(nodeId, transportHub),
      });
      node.registerPinned("here", (id) => ({ receive: () => ({ id, ranOn: nodeId }) }));
      node.register("roam", () => ({ receive: () => nodeId }));
      await node.start();
      systems.push(node);
      return node;
    }),
  );
  return nodes;
}

describe("pinned actor kinds", () => {
  test("`<kind>:<node>` runs on the node it names, whichever node sends", async () => {
    const [a, b, c] = await threeNodes();
    for (const sender of [a, b, c]) {
      for (const target of ["a", "b", "c"]) {
        expect(await sender.ask(`here:${target}`, "where?")).toEqual({ id: target, ranOn: target });
      }
    }
    expect(a.ownerOf("here:c")).toBe("c");
  });

  test("a pinned key for a node that is not a member fails at once instead of waiting", async () => {
    const [a] = await threeNodes();
    // Waiting would end in the ask's timeout error instead; how long it took is not asserted.
    await expect(a.ask("here:nowhere", "x", { timeoutMs: 30_000 })).rejects.toBeInstanceOf(UnknownNodeError);
  });

  test("a tell for a pinned actor of a non-member that reaches a node's inbox is heard by its `orphaned` listener; an ask is answered instead", async () => {
    // What an adopted inbox holds when its node was taken for dead: tells sent to it meanwhile.
    const membershipHub = new MembershipHub();
    const transportHub = new TransportHub();
    const orphans: { message: unknown; nodeId: string }[] = [];
    const c = createActorNode({
      nodeId: "c",
      membership: new InMemoryMembership("c", membershipHub),
      transport: new InMemoryTransport("c", transportHub),
    });
    c.registerPinned("here", (id) => ({ receive: () => ({ id, ranOn: "c" }) }), {
      orphaned: (message, nodeId) => orphans.push({ message, nodeId }),
    });
    await c.start();
    systems.push(c);
    const sender = new InMemoryTransport("x", transportHub);
    await sender.send("c", [
      { t: "env", keys: ["here:ghost"], msg: { type: "push", n: 1 }, hops: 1 },
      { t: "env", keys: ["here:c"], msg: "for c itself", hops: 1 },
    ]);
    const deadline = Date.now() + 10_000;
    while (orphans.length === 0 && Date.now() < deadline) await Bun.sleep(10);
    expect(orphans).toEqual([{ message: { type: "push", n: 1 }, nodeId: "ghost" }]);
    // A pinned actor of a member is not orphaned, and an ask for a non-member fails as before.
    await expect(c.ask("here:ghost", "x", { timeoutMs: 30_000 })).rejects.toBeInstanceOf(UnknownNodeError);
    expect(orphans).toHaveLength(1);
  });

  test("a drain moves ring-placed actors but leaves pinned ones on their node", async () => {
    const [a, b] = await threeNodes();
    await a.ask("here:b", "wake");
    await b.drain();
    expect(b.isActive("here:b")).toBe(true);
    expect(await a.ask("here:b", "still there?")).toEqual({ id: "b", ranOn: "b" });
    expect(b.ownerOf("roam:anything")).not.toBe("b");
  });
});
