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
});
