import { describe, expect, test } from "bun:test";
import { Ring } from "../../actors/index.ts";

const KEYS = 100_000;
const keys = Array.from({ length: KEYS }, (_, i) => `user:${i.toString(36)}-${(i * 7919) % 1000}`);

describe("Ring", () => {
  test("two independently built rings give every key the same owner, whatever the member order", () => {
    const a = new Ring(["node-a", "node-b", "node-c"]);
    const b = new Ring(["node-c", "node-a", "node-b", "node-a"]);
    expect(a.fingerprint).toBe(b.fingerprint);
    for (const key of keys.slice(0, 20_000)) expect(a.ownerOf(key)).toBe(b.ownerOf(key) as string);
  });

  test("with 3 members and 100k keys each member owns a third within ±10%", () => {
    const ring = new Ring(["node-a", "node-b", "node-c"]);
    const counts = new Map<string, number>();
    for (const key of keys) {
      const owner = ring.ownerOf(key) as string;
      counts.set(owner, (counts.get(owner) ?? 0) + 1);
    }
    expect(counts.size).toBe(3);
    for (const count of counts.values()) {
      expect(count).toBeGreaterThanOrEqual((KEYS / 3) * 0.9);
      expect(count).toBeLessThanOrEqual((KEYS / 3) * 1.1);
    }
  });

  test("a 4th member takes about a quarter of the keys and none move between old members", () => {
    const before = new Ring(["node-a", "node-b", "node-c"]);
    const after = new Ring(["node-a", "node-b", "node-c", "node-d"]);
    let moved = 0;
    for (const key of keys) {
      const was = before.ownerOf(key);
      const now = after.ownerOf(key);
      if (was === now) continue;
      moved++;
      expect(now).toBe("node-d");
    }
    expect(moved / KEYS).toBeGreaterThan(0.2);
    expect(moved / KEYS).toBeLessThan(0.3);
  });

  test("removing a member moves only that member's keys", () => {
    const before = new Ring(["node-a", "node-b", "node-c"]);
    const after = new Ring(["node-a", "node-c"]);
    for (const key of keys.slice(0, 20_000)) {
      if (before.ownerOf(key) !== "node-b") expect(after.ownerOf(key)).toBe(before.ownerOf(key) as string);
    }
  });

  test("an empty ring has no owner and reports its size", () => {
    expect(new Ring([]).ownerOf("user:1")).toBeUndefined();
    expect(new Ring(["a", "b"], 16).size).toBe(32);
  });
});
