import { describe, expect, test } from "bun:test";
import { FixedDeadlines, settledWithin } from "../../actors/deadlines.ts";

/**
 * Polls every 5 ms until `condition` holds (15 s at most). A fixed pause a few times a deadline's
 * length is no wait for its timer on a loaded machine: a stall lets the pause's timer come first.
 */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

describe("FixedDeadlines", () => {
  test("deadlines fire in the order they were set, each no earlier than its length after it was set", async () => {
    const deadlines = new FixedDeadlines(30);
    const fired: { name: string; after: number }[] = [];
    const set = (name: string) => {
      const at = performance.now();
      deadlines.add(() => fired.push({ name, after: performance.now() - at }));
    };
    set("a");
    await Bun.sleep(5);
    set("b");
    set("c");
    await until(() => fired.length === 3, "three deadlines");
    expect(fired.map((f) => f.name)).toEqual(["a", "b", "c"]);
    for (const f of fired) expect(f.after).toBeGreaterThanOrEqual(29);
    expect(deadlines.size).toBe(0);
  });

  test("a cancelled deadline never fires, and cancelling the oldest drops it and the cancelled behind it", async () => {
    const deadlines = new FixedDeadlines(20);
    const fired: string[] = [];
    const a = deadlines.add(() => fired.push("a"));
    const b = deadlines.add(() => fired.push("b"));
    deadlines.add(() => fired.push("c"));
    b.cancel();
    expect(deadlines.size).toBe(3);
    a.cancel();
    expect(deadlines.size).toBe(1);
    a.cancel();
    // a and b were due before c: had either fired, it would have by now.
    await until(() => fired.includes("c"), "c");
    expect(fired).toEqual(["c"]);
  });

  test("cancelling every deadline stops its timer; a deadline set in a firing one fires too", async () => {
    const deadlines = new FixedDeadlines(15);
    const fired: string[] = [];
    deadlines.add(() => fired.push("never")).cancel();
    expect(deadlines.size).toBe(0);
    deadlines.add(() => {
      fired.push("first");
      deadlines.add(() => fired.push("second"));
    });
    await until(() => fired.length === 2, "both deadlines");
    expect(fired).toEqual(["first", "second"]);
  });

  test("many deadlines cancelled out of order keep only what is behind the oldest live one", () => {
    const deadlines = new FixedDeadlines(60_000);
    const all = Array.from({ length: 5000 }, () => deadlines.add(() => {}));
    for (let i = all.length - 1; i >= 1; i--) all[i]?.cancel();
    expect(deadlines.size).toBe(5000);
    all[0]?.cancel();
    expect(deadlines.size).toBe(0);
    deadlines.clear();
  });
});

describe("settledWithin", () => {
  test("true when the work fulfils in time, false when the wait runs out first, the work's error when it rejects in time", async () => {
    expect(await settledWithin(Promise.resolve("done"), 1_000)).toBe(true);
    expect(await settledWithin(new Promise(() => {}), 5)).toBe(false);
    await expect(settledWithin(Promise.reject(new Error("broken")), 1_000)).rejects.toThrow("broken");
  });
});
