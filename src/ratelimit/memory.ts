import type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";

/**
 * Hard cap on tracked keys, so a flood of distinct keys cannot grow memory without bound. When it is
 * reached and dropping the expired windows does not free a quarter of it, live windows are dropped
 * down to half: from the rule holding the most, those furthest from their limit (`sweep`).
 */
export const MEMORY_RATE_LIMIT_KEYS = 100_000;

/** One key's fixed window: hits so far, when it ends (Unix ms), its rule's name and limit (for eviction). */
interface Window {
  count: number;
  resetAt: number;
  rule: string;
  limit: number;
}

/** The embedded default: counters in this process, right for a single node. */
export class MemoryRateLimiter implements RateLimiter {
  private readonly windows = new Map<string, Window>();

  /**
   * `now`: the clock (Unix ms). `maxKeys`: the cap on tracked windows (`MEMORY_RATE_LIMIT_KEYS`;
   * smaller in tests).
   */
  constructor(
    private readonly now: () => number = Date.now,
    private readonly maxKeys: number = MEMORY_RATE_LIMIT_KEYS,
  ) {}

  async hit(rule: RateLimitRule, key: string, cost = 1): Promise<RateLimitDecision> {
    const now = this.now();
    const id = `${rule.name}:${key}`;
    let window = this.windows.get(id);
    if (!window || window.resetAt <= now) {
      if (this.windows.size >= this.maxKeys) this.sweep(now);
      window = { count: 0, resetAt: now + rule.windowMs, rule: rule.name, limit: rule.limit };
      this.windows.set(id, window);
    }
    window.count += cost;
    if (window.count <= rule.limit) return { allowed: true };
    return { allowed: false, retryAfterMs: window.resetAt - now };
  }

  async release(rule: RateLimitRule, key: string, cost = 1): Promise<void> {
    const window = this.windows.get(`${rule.name}:${key}`);
    if (window && window.resetAt > this.now()) window.count = Math.max(0, window.count - cost);
  }

  async reset(rule: RateLimitRule, key: string): Promise<number> {
    return this.windows.delete(`${rule.name}:${key}`) ? 1 : 0;
  }

  async peek(rule: RateLimitRule, key: string): Promise<RateLimitDecision> {
    const now = this.now();
    const window = this.windows.get(`${rule.name}:${key}`);
    if (!window || window.resetAt <= now || window.count < rule.limit) return { allowed: true };
    return { allowed: false, retryAfterMs: window.resetAt - now };
  }

  async forget(fragment: string): Promise<number> {
    let removed = 0;
    for (const id of this.windows.keys()) {
      if (id.includes(fragment) && this.windows.delete(id)) removed++;
    }
    return removed;
  }

  /**
   * Drops expired windows; if that frees less than a quarter of the cap, drops live ones down to
   * half of it, always from the rule that holds the most windows, and there the half furthest from
   * its limit (fewest hits for its budget; the oldest first among equals).
   *
   * Per rule, because a flood's windows are all of one rule: it evicts its own, whatever their
   * fill. Ranked across rules, windows filled past their limit by cheap refused requests
   * (registrations: 11 from each of 100,000 IPv6 /64s, about 1.1 M requests) outranked a password
   * guesser's account-wide failure count and had it dropped: reset, another 100 guesses. A flood of
   * one-hit windows (key fetches of many users from many devices, logins from many networks)
   * likewise leaves a window near or past its limit counting.
   *
   * A quarter at least, because a sweep scans every window: when each sweep found only a window or
   * two expired (windows of different lengths expiring as new keys come, a map held full by steady
   * traffic), every new key paid a scan of the whole map (0.6 ms of CPU per key at 100,000, docs/BENCHMARKS.md).
   */
  private sweep(now: number): void {
    for (const [id, window] of this.windows) if (window.resetAt <= now) this.windows.delete(id);
    if (this.windows.size < (this.maxKeys * 3) / 4) return;
    const byRule = new Map<string, { id: string; fill: number }[]>();
    for (const [id, window] of this.windows) {
      const fill = window.limit > 0 ? window.count / window.limit : Number.POSITIVE_INFINITY;
      const list = byRule.get(window.rule);
      if (list) list.push({ id, fill });
      else byRule.set(window.rule, [{ id, fill }]);
    }
    const target = Math.floor(this.maxKeys / 2);
    while (this.windows.size > target) {
      let largest: { id: string; fill: number }[] = [];
      let largestRule = "";
      for (const [rule, list] of byRule) {
        if (list.length > largest.length) {
          largest = list;
          largestRule = rule;
        }
      }
      // Array.prototype.sort is stable: among equal fills, insertion (window start) order stays.
      largest.sort((a, b) => a.fill - b.fill);
      const drop = Math.min(Math.max(1, Math.floor(largest.length / 2)), this.windows.size - target);
      for (let i = 0; i < drop; i++) this.windows.delete(largest[i].id);
      byRule.set(largestRule, largest.slice(drop));
    }
  }
}
