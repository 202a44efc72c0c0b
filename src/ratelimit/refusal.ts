import { DomainError } from "../errors/index.ts";
import type { RateLimiter, RateLimitRule } from "./types.ts";

/**
 * The `rate_limited` DomainError of a refused hit: HTTP 429 with `Retry-After` in whole seconds,
 * at least 1 (`retryAfterMs` is the window's time left, ms).
 */
export function rateLimitedError(retryAfterMs: number, message: string): DomainError {
  return new DomainError("rate_limited", message, {
    retryAfterSeconds: Math.max(1, Math.ceil(retryAfterMs / 1000)),
  });
}

/**
 * Spends one hit of the device's budget (`rules.device`, key `<userId>:<deviceId>`), then one of its
 * account's (`rules.account`, key `<userId>`: all its devices together); throws
 * `rateLimitedError(…, message)` at the first one spent, so a device refused spends nothing of its
 * account's and one device at its limit does not eat into the others'.
 */
export async function spendDeviceThenAccount(
  limiter: RateLimiter,
  rules: { device: RateLimitRule; account: RateLimitRule },
  who: { userId: string; deviceId: number },
  message: string,
): Promise<void> {
  await spendOrRefuse(limiter, rules.device, `${who.userId}:${who.deviceId}`, message);
  await spendOrRefuse(limiter, rules.account, who.userId, message);
}

/** Counts one hit of `rule` for `key`; throws `rateLimitedError(…, message)` when the window is spent. */
export async function spendOrRefuse(
  limiter: RateLimiter,
  rule: RateLimitRule,
  key: string,
  message: string,
): Promise<void> {
  const decision = await limiter.hit(rule, key);
  if (!decision.allowed) throw rateLimitedError(decision.retryAfterMs, message);
}
