import type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";

/** Hard cap on tracked keys, so a flood of distinct keys cannot grow memory without bound. */
const MAX_KEYS = 100_000;

/** The embedded default: counters in this process, right for a single node. */
export class MemoryRateLimiter implements RateLimiter {
  private readonly windows = new Map<string, { count: number; resetAt: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  async hit(rule: RateLimitRule, key: string): Promise<RateLimitDecision> {
    const now = this.now();
    const id = `${rule.name}:${key}`;
    let window = this.windows.get(id);
    if (!window || window.resetAt <= now) {
      if (this.windows.size >= MAX_KEYS) this.sweep(now);
      window = { count: 0, resetAt: now + rule.windowMs };
      this.windows.set(id, window);
    }
    window.count++;
    if (window.count <= rule.limit) return { allowed: true };
    return { allowed: false, retryAfterMs: window.resetAt - now };
  }

  async release(rule: RateLimitRule, key: string): Promise<void> {
    const window = this.windows.get(`${rule.name}:${key}`);
    if (window && window.resetAt > this.now() && window.count > 0) window.count--;
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

  /** Drops expired windows; if every window is live, drops the oldest half rather than grow. */
  private sweep(now: number): void {
    for (const [id, window] of this.windows) if (window.resetAt <= now) this.windows.delete(id);
    if (this.windows.size < MAX_KEYS) return;
    let drop = this.windows.size / 2;
    for (const id of this.windows.keys()) {
      if (drop-- <= 0) break;
      this.windows.delete(id);
    }
  }
}
