import { describe, expect, test } from "bun:test";
import { TokenBucket } from "../../src/gateway/token-bucket.ts";

/** A clock the test moves by hand, in milliseconds like performance.now(). */
function manualClock(start = 1_000) {
  let now = start;
  return {
    now: () => now,
    advance(ms: number) {
      now += ms;
    },
  };
}

/** How many takes succeed in a row right now. */
function drain(bucket: TokenBucket, limit = 10_000): number {
  let taken = 0;
  while (taken < limit && bucket.take()) taken++;
  return taken;
}

describe("TokenBucket", () => {
  test("starts full: `burst` takes succeed at once, the next one fails", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(10, 5, clock.now);
    expect(drain(bucket)).toBe(5);
    expect(bucket.take()).toBe(false);
  });

  test("refills at `rate` tokens a second", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(10, 50, clock.now);
    drain(bucket);
    clock.advance(1_000);
    expect(drain(bucket)).toBe(10);
    clock.advance(300);
    expect(drain(bucket)).toBe(3);
  });

  test("fractions of a token add up across calls: one token per 1/rate seconds", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(4, 1, clock.now);
    expect(bucket.take()).toBe(true);
    clock.advance(125); // half a token
    expect(bucket.take()).toBe(false);
    clock.advance(125); // the other half
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
  });

  test("never saves up more than `burst`, however long it stays idle", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(100, 20, clock.now);
    drain(bucket);
    clock.advance(3_600_000);
    expect(drain(bucket)).toBe(20);
    // Idle again without draining first: still capped at burst.
    clock.advance(3_600_000);
    clock.advance(3_600_000);
    expect(drain(bucket)).toBe(20);
  });

  test("refused takes cost nothing: the wait for the next token does not grow", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(1, 1, clock.now);
    expect(bucket.take()).toBe(true);
    // Steps of 1/256 s add up exactly in binary floating point.
    for (let i = 0; i < 128; i++) {
      clock.advance(1000 / 256);
      expect(bucket.take()).toBe(false);
    }
    clock.advance(499);
    expect(bucket.take()).toBe(false);
    clock.advance(1); // 128/256 s + 500 ms = one second since the last token
    expect(bucket.take()).toBe(true);
  });

  test("with rate 0 only the initial burst is ever given", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(0, 3, clock.now);
    expect(drain(bucket)).toBe(3);
    clock.advance(60_000);
    expect(bucket.take()).toBe(false);
  });

  test("by default it reads performance.now(): a fresh bucket gives its burst", () => {
    const bucket = new TokenBucket(1, 2);
    expect(drain(bucket)).toBe(2);
  });
});
