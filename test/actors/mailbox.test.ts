import { describe, expect, test } from "bun:test";
import { Mailbox } from "../../actors/index.ts";

describe("Mailbox", () => {
  test("returns messages in FIFO order across buffer growth and wrap-around", () => {
    const mailbox = new Mailbox<number>(1000);
    const out: number[] = [];
    for (let i = 0; i < 10; i++) mailbox.offer(i);
    for (let i = 0; i < 5; i++) out.push(mailbox.shift() as number);
    for (let i = 10; i < 300; i++) mailbox.offer(i);
    for (let item = mailbox.shift(); item !== undefined; item = mailbox.shift()) out.push(item);
    expect(out).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(mailbox.size).toBe(0);
  });

  test("refuses offers at capacity and signals when writable again", async () => {
    const mailbox = new Mailbox<string>(2);
    expect(mailbox.offer("a")).toBe(true);
    expect(mailbox.offer("b")).toBe(true);
    expect(mailbox.isFull).toBe(true);
    expect(mailbox.offer("c")).toBe(false);
    expect(mailbox.size).toBe(2);
    let writable = false;
    const wait = mailbox.whenWritable().then(() => {
      writable = true;
    });
    await Promise.resolve();
    expect(writable).toBe(false);
    mailbox.shift();
    await wait;
    expect(writable).toBe(true);
  });

  test("force appends past capacity for already-accepted messages", () => {
    const mailbox = new Mailbox<number>(1);
    mailbox.offer(1);
    mailbox.force(2);
    expect(mailbox.clear()).toEqual([1, 2]);
  });

  test("rejects a non-positive capacity with a message naming it", () => {
    expect(() => new Mailbox(0)).toThrow(/positive integer capacity/);
  });

  test("rejects a fractional capacity", () => {
    expect(() => new Mailbox(1.5)).toThrow(/positive integer capacity/);
  });

  test("an empty mailbox yields nothing and has room", async () => {
    const mailbox = new Mailbox<number>(3);
    expect(mailbox.shift()).toBeUndefined();
    expect(mailbox.clear()).toEqual([]);
    expect(mailbox.isFull).toBe(false);
    let writable = false;
    await mailbox.whenWritable().then(() => {
      writable = true;
    });
    expect(writable).toBe(true);
  });

  test("every writer waiting for room is woken once a message leaves", async () => {
    const mailbox = new Mailbox<number>(1);
    mailbox.offer(1);
    const woken: number[] = [];
    const waits = [1, 2, 3].map((writer) => mailbox.whenWritable().then(() => woken.push(writer)));
    await Promise.resolve();
    expect(woken).toEqual([]);
    mailbox.shift();
    await Promise.all(waits);
    expect(woken).toEqual([1, 2, 3]);
  });

  test("clear empties a full mailbox, oldest first, and wakes waiting writers", async () => {
    const mailbox = new Mailbox<number>(2);
    mailbox.offer(1);
    mailbox.offer(2);
    const wait = mailbox.whenWritable();
    expect(mailbox.clear()).toEqual([1, 2]);
    await wait;
    expect(mailbox.size).toBe(0);
    expect(mailbox.offer(3)).toBe(true);
  });

  test("after a burst is drained and its buffer released, the mailbox works as new", () => {
    const mailbox = new Mailbox<number>(10_000);
    for (let round = 0; round < 3; round++) {
      // 1000 items grow the buffer far past the size kept when the mailbox empties.
      for (let i = 0; i < 1000; i++) expect(mailbox.offer(round * 1000 + i)).toBe(true);
      const out = mailbox.clear();
      expect(out).toEqual(Array.from({ length: 1000 }, (_, i) => round * 1000 + i));
      expect(mailbox.size).toBe(0);
    }
    mailbox.offer(7);
    expect(mailbox.shift()).toBe(7);
  });
});
