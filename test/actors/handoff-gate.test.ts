import { afterEach, describe, expect, test } from "bun:test";
import { HandoffGate, type HeldEnvelope } from "../../actors/handoff-gate.ts";
import { Ring } from "../../actors/ring.ts";

// "self" joins a ring of "b" and "c": every key it gains was owned by b or c before.
const before = new Ring(["b", "c"]);
const after = new Ring(["b", "c", "self"]);
const everyone = new Set(["b", "c", "self"]);

/** A key that moves from `previousOwner` to self in the join above. */
function keyMovingFrom(previousOwner: string, skip = 0): string {
  let found = 0;
  for (let i = 0; ; i++) {
    const key = `user:${i}`;
    if (before.ownerOf(key) === previousOwner && after.ownerOf(key) === "self" && found++ === skip)
      return key;
  }
}

const fromB = keyMovingFrom("b");
const fromC = keyMovingFrom("c");

function until(check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (check()) resolve();
      else if (Date.now() - started > timeoutMs) reject(new Error("condition not met in time"));
      else setTimeout(poll, 5);
    };
    poll();
  });
}

const gates: HandoffGate[] = [];
const timedOut: string[] = [];

function gate(timeoutMs = 60_000): HandoffGate {
  const created = new HandoffGate("self", timeoutMs, (nodeId) => timedOut.push(nodeId));
  gates.push(created);
  return created;
}

/** Holds a message for `key` and records its release in `released`. */
function hold(target: HandoffGate, key: string, released: string[], hops = 1, label = key): void {
  const envelope: HeldEnvelope = { key, hops, release: () => released.push(label) };
  target.hold(envelope);
}

afterEach(() => {
  for (const created of gates.splice(0)) created.clear();
  timedOut.length = 0;
});

describe("HandoffGate", () => {
  test("holds nothing before a ring change", () => {
    expect(gate().mustHold(fromB)).toBe(false);
  });

  test("holds keys whose previous owner is alive until that owner's notice for the new ring", () => {
    const g = gate();
    g.ringChanged(before, after, everyone);
    expect([...g.pending].sort()).toEqual(["b", "c"]);
    expect(g.mustHold(fromB)).toBe(true);
    expect(g.mustHold(fromC)).toBe(true);
    const released: string[] = [];
    hold(g, fromB, released);
    hold(g, fromC, released);

    g.noticeFrom("b", after.fingerprint);
    expect(released).toEqual([fromB]);
    expect(g.mustHold(fromB)).toBe(false);
    expect(g.mustHold(fromC)).toBe(true);

    g.noticeFrom("c", after.fingerprint);
    expect(released).toEqual([fromB, fromC]);
    expect(g.pending).toEqual([]);
  });

  test("a notice for another ring releases nothing", () => {
    const g = gate();
    g.ringChanged(before, after, everyone);
    const released: string[] = [];
    hold(g, fromB, released);
    g.noticeFrom("b", before.fingerprint);
    expect(released).toEqual([]);
    expect(g.mustHold(fromB)).toBe(true);
  });

  test("a notice that arrived before the ring change is not waited for again", () => {
    const g = gate();
    g.noticeFrom("b", after.fingerprint);
    g.ringChanged(before, after, everyone);
    expect(g.pending).toEqual(["c"]);
    expect(g.mustHold(fromB)).toBe(false);
    expect(g.mustHold(fromC)).toBe(true);
  });

  test("a previous owner that is no longer alive is not waited for", () => {
    const g = gate();
    g.ringChanged(before, after, new Set(["c", "self"]));
    expect(g.pending).toEqual(["c"]);
    expect(g.mustHold(fromB)).toBe(false);
  });

  test("stops waiting for a previous owner that dies during the wait and releases its messages", () => {
    const g = gate();
    g.ringChanged(before, after, everyone);
    const released: string[] = [];
    hold(g, fromB, released);
    const withoutB = new Ring(["c", "self"]);
    g.ringChanged(after, withoutB, new Set(["c", "self"]));
    expect(released).toEqual([fromB]);
    expect(g.pending).not.toContain("b");
  });

  test("releases re-forwarded messages (2+ hops) before those sent straight to the new owner", () => {
    const g = gate();
    g.ringChanged(before, after, everyone);
    const released: string[] = [];
    hold(g, fromB, released, 1, "direct-1");
    hold(g, keyMovingFrom("b", 1), released, 2, "via-old-owner-1");
    hold(g, fromB, released, 1, "direct-2");
    hold(g, keyMovingFrom("b", 2), released, 3, "via-old-owner-2");
    g.noticeFrom("b", after.fingerprint);
    expect(released).toEqual(["via-old-owner-1", "via-old-owner-2", "direct-1", "direct-2"]);
  });

  test("gives up on a silent previous owner after the timeout and releases what waited for it", async () => {
    const g = gate(20);
    g.ringChanged(before, after, new Set(["b", "self"]));
    const released: string[] = [];
    hold(g, fromB, released);
    expect(released).toEqual([]);
    await until(() => released.length === 1);
    expect(released).toEqual([fromB]);
    expect(timedOut).toEqual(["b"]);
    expect(g.mustHold(fromB)).toBe(false);
  });

  test("clear releases every held message and forgets every wait", () => {
    const g = gate();
    g.ringChanged(before, after, everyone);
    const released: string[] = [];
    hold(g, fromB, released);
    hold(g, fromC, released);
    g.clear();
    expect(released.sort()).toEqual([fromB, fromC].sort());
    expect(g.pending).toEqual([]);
    expect(g.mustHold(fromB)).toBe(false);
    expect(timedOut).toEqual([]);
  });
});
