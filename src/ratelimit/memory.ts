import type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";

/**
 * Hard cap on tracked keys, so a flood of distinct keys cannot grow memory without bound. When it is
 * reached with every window still live, half of them are dropped: those furthest from their limit.
 */
export const MEMORY_RATE_LIMIT_KEYS = 100_000;
const MAX_KEYS = MEMORY_RATE_LIMIT_KEYS;

/** One key's fixed window: hits so far, when it ends (Unix ms), and its rule's limit (for eviction). */
interface Window {
  count: number;
  resetAt: number;
  limit: number;
}

/** The embedded default: counters in this process, right for a single node. */
export class MemoryRateLimiter implements RateLimiter {
  private readonly windows = new Map<string, Window>();

  constructor(private readonly now: () => number = Date.now) {}

  async hit(rule: RateLimitRule, key: string, cost = 1): Promise<RateLimitDecision> {
    const now = this.now();
    const id = `${rule.name}:${key}`;
    let window = this.windows.get(id);
    if (!window || window.resetAt <= now) {
      if (this.windows.size >= MAX_KEYS) this.sweep(now);
      window = { count: 0, resetAt: now + rule.windowMs, limit: rule.limit };
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
   * Drops expired windows; if that leaves the map full, drops the half that is furthest from its
   * limit (fewest hits for its budget; the oldest first among equals). A flood of distinct keys
   * (key fetches of many users from many devices, logins from many IPv6 networks) makes windows of
   * one or two hits, so it evicts its own: a window near or past its limit (a password guesser's
   * failures, an address that is refused) stays and keeps counting. Dropping the oldest half, as
   * before, let such a flood reset every budget older than it.
   */
  private sweep(now: number): void {
    for (const [id, window] of this.windows) if (window.resetAt <= now) this.windows.delete(id);
    if (this.windows.size < MAX_KEYS) return;
    const ranked = [...this.windows].map(([id, window]) => ({
      id,
      fill: window.limit > 0 ? window.count / window.limit : Number.POSITIVE_INFINITY,
    }));
    // Array.prototype.sort is stable: among equal fills, insertion (window start) order stays.
    ranked.sort((a, b) => a.fill - b.fill);
    const drop = Math.floor(ranked.length / 2);
    for (let i = 0; i < drop; i++) this.windows.delete(ranked[i].id);
  }
}
