import { describe, expect, test } from "bun:test";
import { MIN_RETRY_WAIT_MS, RATE_LIMIT_WAIT_MS, retryWaitMs } from "../../src/client/socket.ts";

// The SDK's resend pause after `busy` / `rate_limited` comes from the server's `retryAfterMs`. A
// broken or hostile server's figure must not turn the client into a resend loop: a negative or zero
// wait fires at once, and so does one past 2^31 - 1 ms (timers hold a signed 32-bit delay).
describe("retryWaitMs", () => {
  test("a wait the server names within bounds is kept", () => {
    expect(retryWaitMs(25, 1000)).toBe(25);
    expect(retryWaitMs(1500, 1000)).toBe(1500);
    expect(retryWaitMs(RATE_LIMIT_WAIT_MS, 1000)).toBe(RATE_LIMIT_WAIT_MS);
  });

  test("no wait, or one that is not a finite number, takes the fallback", () => {
    expect(retryWaitMs(undefined, 1000)).toBe(1000);
    expect(retryWaitMs("30", 1000)).toBe(1000);
    expect(retryWaitMs(Number.NaN, 1000)).toBe(1000);
    expect(retryWaitMs(Number.POSITIVE_INFINITY, 1000)).toBe(1000);
  });

  test("negative, zero and fractional waits never resend at once", () => {
    for (const wait of [-1, -1e12, 0, 0.2, 3]) expect(retryWaitMs(wait, 1000)).toBe(MIN_RETRY_WAIT_MS);
  });

  test("a wait past the longest one is held to it, never overflowing a timer", () => {
    for (const wait of [2 ** 31 + 5, 1e15, RATE_LIMIT_WAIT_MS + 1])
      expect(retryWaitMs(wait, 1000)).toBe(RATE_LIMIT_WAIT_MS);
  });
});
