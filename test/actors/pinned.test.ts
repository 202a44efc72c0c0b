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

  test("a drain moves ring-placed actors but leaves pinned ones on their node", async () => {
    const [a, b] = await threeNodes();
    await a.ask("here:b", "wake");
    await b.drain();
    expect(b.isActive("here:b")).toBe(true);
    expect(await a.ask("here:b", "still there?")).toEqual({ id: "b", ranOn: "b" });
    expect(b.ownerOf("roam:anything")).not.toBe("b");
  });
});
