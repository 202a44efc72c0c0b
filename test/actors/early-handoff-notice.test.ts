import { afterEach, expect, test } from "bun:test";
import {
  type ActorSystem,
  createActorNode,
  InMemoryMembership,
  InMemoryTransport,
  type MemberInfo,
  MembershipHub,
  type MembershipListener,
  TransportHub,
} from "../../actors/index.ts";
import { waitUntil } from "../support/ws.ts";

/**
 * A node's view of the membership that can fall behind the others' (a Redis read that is slow on
 * a loaded machine): while it lags, `members()` answers the view of `lag()` and changes are not
 * passed on; `catchUp()` passes the current view.
 */
class LaggingMembership extends InMemoryMembership {
  private snapshot: readonly MemberInfo[] | undefined;

  lag(): void {
    this.snapshot = super.members();
  }

  async catchUp(): Promise<void> {
    this.snapshot = undefined;
    await this.refresh();
  }

  override members(): readonly MemberInfo[] {
    return this.snapshot ?? super.members();
  }

  override onChange(listener: MembershipListener): () => void {
    return super.onChange((members) => {
      if (this.snapshot === undefined) listener(members);
    });
  }
}

const systems: ActorSystem[] = [];
afterEach(async () => {
  await Promise.all(systems.splice(0).map((s) => s.stop().catch(() => undefined)));
});

// A drained node's handoff notice can reach a new owner before that owner's own view of the
// membership shows the drain (the drained node read it first). The keys it named were not the
// new owner's yet, so they were skipped, and the handed-off actors stayed inactive until their
// next message (likely the cluster.test.ts drain test's "rec:fan1 reactivated" timeouts, 3 of
// ~90 runs at load 20-30).
test("a handoff notice that arrives before the new owner's ring changes still reactivates its keys", async () => {
  const membershipHub = new MembershipHub();
  const transportHub = new TransportHub();
  const lagging = new LaggingMembership("a", membershipHub);
  const start = async (nodeId: string, membership: InMemoryMembership) => {
    const node = createActorNode({
      nodeId,
      membership,
      transport: new InMemoryTransport(nodeId, transportHub),
      idleTimeoutMs: 0,
    });
    node.register("rec", () => ({ receive: () => nodeId }));
    await node.start();
    systems.push(node);
    return node;
  };
  const a = await start("a", lagging);
  const b = await start("b", new InMemoryMembership("b", membershipHub));
  await waitUntil(() => a.ringMembers().length === 2 && b.ringMembers().length === 2, "the ring", 10_000);
  const onB = Array.from({ length: 40 }, (_, i) => `rec:k${i}`).filter((key) => a.ownerOf(key) === "b");
  expect(onB.length).toBeGreaterThan(0);
  for (const key of onB) expect(await a.ask(key, {})).toBe("b");

  lagging.lag();
  const received = a.stats().transport.transfersReceived;
  await b.drain();
  expect(b.activeKeys()).toEqual([]);
  // b's notice naming the keys reached a while a still routes by the old ring.
  await waitUntil(() => a.stats().transport.transfersReceived > received, "b's handoff notice", 10_000);
  expect(a.ringMembers()).toEqual(["a", "b"]);
  expect(onB.filter((key) => a.isActive(key))).toEqual([]);

  await lagging.catchUp();
  expect(a.ringMembers()).toEqual(["a"]);
  await waitUntil(() => onB.every((key) => a.isActive(key)), "b's actors to be reactivated on a", 15_000);
});
