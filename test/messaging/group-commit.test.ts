import { describe, expect, test } from "bun:test";
import { GroupCommit } from "../../src/messaging/group-commit.ts";

/**
 * A write whose calls the test completes by hand: each call is recorded with its items and
 * waits until `succeed(i)` or `fail(i)` settles it. Results are the items doubled.
 */
function manualWrite() {
  const calls: { items: number[]; resolve: (r: number[]) => void; reject: (e: unknown) => void }[] = [];
  const write = (items: number[]) =>
    new Promise<number[]>((resolve, reject) => {
      calls.push({ items, resolve, reject });
    });
  return {
    write,
    calls,
    batches: () => calls.map((c) => c.items),
    succeed(i: number) {
      calls[i].resolve(calls[i].items.map((x) => x * 2));
    },
    fail(i: number, error: unknown) {
      calls[i].reject(error);
    },
  };
}

/** Lets queued promise callbacks (the drain loop's next iteration) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("GroupCommit", () => {
  test("the first submission is written at once; those made while it is in flight go together in the next write", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write);
    const first = commit.submit([1, 2]);
    expect(w.batches()).toEqual([[1, 2]]);
    const second = commit.submit([3]);
    const third = commit.submit([4, 5]);
    await settle();
    expect(w.batches()).toEqual([[1, 2]]); // still one write in flight
    expect(commit.backlog).toBe(3);

    w.succeed(0);
    expect(await first).toEqual([2, 4]);
    await settle();
    expect(w.batches()).toEqual([
      [1, 2],
      [3, 4, 5],
    ]);
    expect(commit.backlog).toBe(0);

    w.succeed(1);
    // Each caller gets the results of its own items, in its own order.
    expect(await second).toEqual([6]);
    expect(await third).toEqual([8, 10]);
  });

  test("writes happen one at a time and commit in submission order", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write);
    const committed: number[] = [];
    const submissions = [[1], [2], [3], [4], [5]].map((items, i) =>
      commit.submit(items).then(() => committed.push(i)),
    );
    // Complete each write as it appears: never more than one outstanding.
    for (let i = 0; i < 2; i++) {
      await settle();
      expect(w.calls.length).toBe(i + 1);
      w.succeed(i);
    }
    await Promise.all(submissions);
    expect(w.batches()).toEqual([[1], [2, 3, 4, 5]]);
    expect(committed).toEqual([0, 1, 2, 3, 4]);
  });

  test("a failing write rejects only the submissions in its batch; the next batch still commits", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write);
    const first = commit.submit([1]);
    const second = commit.submit([2]);
    const third = commit.submit([3]);
    w.succeed(0);
    await settle();
    expect(w.batches()).toEqual([[1], [2, 3]]);
    const later = commit.submit([4]); // arrives while the failing write is in flight
    const failure = new Error("disk full");
    w.fail(1, failure);
    expect(await first).toEqual([2]);
    await expect(second).rejects.toBe(failure);
    await expect(third).rejects.toBe(failure);
    await settle();
    expect(w.batches()).toEqual([[1], [2, 3], [4]]);
    w.succeed(2);
    expect(await later).toEqual([8]);
  });

  test("a batch holds whole submissions up to maxBatch items; a larger submission goes alone", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write, 4);
    const all = [
      commit.submit([1]), // written at once
      commit.submit([2, 3]),
      commit.submit([4, 5]), // 2 + 2 = 4 items: fits with the previous one
      commit.submit([6]), // would make 5: next batch
      commit.submit([7, 8, 9, 10, 11]), // more than maxBatch by itself: its own batch
      commit.submit([12]),
    ];
    for (let i = 0; i < 5; i++) {
      await settle();
      w.succeed(i);
    }
    await Promise.all(all);
    expect(w.batches()).toEqual([[1], [2, 3, 4, 5], [6], [7, 8, 9, 10, 11], [12]]);
    expect(await all[4]).toEqual([14, 16, 18, 20, 22]);
  });

  test("an empty submission resolves with no results and writes nothing", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write);
    expect(await commit.submit([])).toEqual([]);
    expect(w.calls.length).toBe(0);
  });

  test("after the queue drains, the next submission starts a write again", async () => {
    const w = manualWrite();
    const commit = new GroupCommit(w.write);
    const first = commit.submit([1]);
    w.succeed(0);
    await first;
    await settle();
    const second = commit.submit([2]);
    expect(w.batches()).toEqual([[1], [2]]);
    w.succeed(1);
    expect(await second).toEqual([4]);
  });

  describe("with two writes in flight and a key per item", () => {
    // Items are numbers; the key is the tens digit (11, 12 → "1"; 21 → "2"), standing in for the sender.
    const options = { maxInFlight: 2, keyOf: (n: number) => String(Math.floor(n / 10)) };

    test("a submission of another key is written while the first write is in flight; one of the same key waits for it", async () => {
      const w = manualWrite();
      const commit = new GroupCommit(w.write, undefined, undefined, options);
      const a1 = commit.submit([11]);
      const b1 = commit.submit([21]);
      expect(w.batches()).toEqual([[11], [21]]);
      const a2 = commit.submit([12]);
      const b2 = commit.submit([22]);
      await settle();
      expect(w.batches()).toEqual([[11], [21]]); // two in flight: the rest gather
      expect(commit.backlog).toBe(2);

      // The second write commits first: key 2's next goes, key 1's still waits for the first.
      w.succeed(1);
      expect(await b1).toEqual([42]);
      await settle();
      expect(w.batches()).toEqual([[11], [21], [22]]);

      w.succeed(0);
      expect(await a1).toEqual([22]);
      await settle();
      expect(w.batches()).toEqual([[11], [21], [22], [12]]);
      w.succeed(2);
      w.succeed(3);
      expect(await a2).toEqual([24]);
      expect(await b2).toEqual([44]);
    });

    test("a key is never in two writes at once, and each key's items are written in submission order", async () => {
      const w = manualWrite();
      const open = new Set<number>();
      let overlaps = 0;
      let mostAtOnce = 0;
      // Wraps the manual write: counts writes that start with a key a write in flight still carries.
      const write = (items: number[]) => {
        const index = w.calls.length;
        const busy = [...open].flatMap((i) => (w.calls[i]?.items ?? []).map(options.keyOf));
        if (items.some((n) => busy.includes(options.keyOf(n)))) overlaps++;
        open.add(index);
        mostAtOnce = Math.max(mostAtOnce, open.size);
        return w.write(items).finally(() => open.delete(index));
      };
      const commit = new GroupCommit(write, undefined, undefined, options);
      const all = [11, 21, 12, 31, 13, 22, 32, 14].map((n) => commit.submit([n]));
      // Settle the oldest write still open, one at a time, until every submission is answered.
      for (let next = 0; next < 8 && (open.size > 0 || next < w.calls.length); next++) {
        await settle();
        if (next < w.calls.length) w.succeed(next);
      }
      await Promise.all(all);
      expect(overlaps).toBe(0);
      expect(mostAtOnce).toBe(2);
      const written = w.batches().flat();
      for (const key of ["1", "2", "3"]) {
        const mine = written.filter((n) => options.keyOf(n) === key);
        expect(mine).toEqual([...mine].sort((x, y) => x - y));
      }
      expect(written.sort()).toEqual([11, 12, 13, 14, 21, 22, 31, 32]);
    });

    test("a submission held behind a key keeps its other keys: a later one of those keys does not overtake it", async () => {
      const w = manualWrite();
      const commit = new GroupCommit(w.write, undefined, undefined, options);
      void commit.submit([11]);
      void commit.submit([21]);
      // Both slots taken; then 12 + 31 (keys 1 and 3) and 32 (key 3 only) gather.
      const held = commit.submit([12, 31]);
      const later = commit.submit([32]);
      w.succeed(1); // key 2's write ends; key 1 is still in flight
      await settle();
      // 12+31 must wait for key 1, and 32 (key 3, free) must wait behind 31: nothing is written.
      expect(w.batches()).toEqual([[11], [21]]);
      w.succeed(0);
      await settle();
      // Then both go, in order, in one write.
      expect(w.batches()).toEqual([[11], [21], [12, 31, 32]]);
      w.succeed(2);
      expect(await held).toEqual([24, 62]);
      expect(await later).toEqual([64]);
    });

    test("a failed write rejects only its own submissions; the other write and later ones go on", async () => {
      const w = manualWrite();
      const commit = new GroupCommit(w.write, undefined, undefined, options);
      const a1 = commit.submit([11]);
      const b1 = commit.submit([21]);
      const a2 = commit.submit([12]);
      w.fail(0, new Error("database went away"));
      await expect(a1).rejects.toThrow("database went away");
      await settle();
      expect(w.batches()).toEqual([[11], [21], [12]]);
      w.succeed(1);
      w.succeed(2);
      expect(await b1).toEqual([42]);
      expect(await a2).toEqual([24]);
    });

    test("without a key, writes stay one at a time whatever maxInFlight says", async () => {
      const w = manualWrite();
      const commit = new GroupCommit(w.write, undefined, undefined, { maxInFlight: 4 });
      void commit.submit([1]);
      void commit.submit([2]);
      await settle();
      expect(w.batches()).toEqual([[1]]);
    });
  });
});
