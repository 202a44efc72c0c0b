import { afterEach, describe, expect, test } from "bun:test";
import {
  type ActorSystem,
  createActorNode,
  InMemoryMembership,
  InMemoryTransport,
  MembershipHub,
  TransportHub,
} from "../../actors/index.ts";
import { waitUntil } from "../support/ws.ts";

const systems: ActorSystem[] = [];
afterEach(async () => {
  await Promise.all(systems.splice(0).map((s) => s.stop()));
});

/** In-process nodes sharing in-memory hubs. */
async function nodes(ids: string[]) {
  const membershipHub = new MembershipHub();
  const transportHub = new TransportHub();
  return Promise.all(
    ids.map(async (nodeId) => {
      const node = createActorNode({
        nodeId,
        membership: new InMemoryMembership(nodeId, membershipHub),
        transport: new InMemoryTransport(nodeId, transportHub),
      });
      await node.start();
      systems.push(node);
      return node;
    }),
  );
}

// `onNodesGone` reports deaths only: a node that stops gracefully and takes itself off the registry
// is reported to nobody, so what survivors must take over from it (erasure jobs) waited for a
// periodic pass. `onMembersGone` reports every node that leaves the view, that one included.
describe("ActorSystem.onMembersGone", () => {
  test("a graceful stop is reported to the others, once, and never to the node itself", async () => {
    const [a, b, c] = await nodes(["a", "b", "c"]);
    await waitUntil(() => a.ringMembers().length === 3, "the three nodes to see each other", 10_000);
    const heard: Record<string, string[][]> = { a: [], b: [] };
    const deaths: unknown[] = [];
    a.onMembersGone((gone) => heard.a?.push([...gone]));
    b.onMembersGone((gone) => heard.b?.push([...gone]));
    a.onNodesGone((gone) => deaths.push(gone));
    await c.stop();
    systems.splice(systems.indexOf(c as ActorSystem), 1);
    await waitUntil(
      () => heard.a?.length === 1 && heard.b?.length === 1,
      "both survivors to hear it",
      10_000,
    );
    expect(heard).toEqual({ a: [["c"]], b: [["c"]] });
    // The death listener heard nothing of it.
    expect(deaths).toEqual([]);
    await b.stop();
    systems.splice(systems.indexOf(b as ActorSystem), 1);
    await waitUntil(() => heard.a?.length === 2, "a to hear b go", 10_000);
    expect(heard.a).toEqual([["c"], ["b"]]);
  });
});
