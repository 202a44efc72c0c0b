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
});
