import type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";

/**
 * A rate limiter that reports every refused hit by its rule's name (a fixed name such as
 * `login-address`, never the key, which names a person or an address) and otherwise defers to
 * `inner`. The composition root wraps the node's limiter with it for the refusal metrics.
 */
export class CountingRateLimiter implements RateLimiter {
  constructor(
    /** The limiter that keeps the counters (memory or Redis). */
    readonly inner: RateLimiter,
    private readonly onRefused: (ruleName: string) => void,
  ) {}

  async hit(rule: RateLimitRule, key: string, cost?: number): Promise<RateLimitDecision> {
    const decision = await this.inner.hit(rule, key, cost);
    if (!decision.allowed) this.onRefused(rule.name);
    return decision;
  }

  release(rule: RateLimitRule, key: string, cost?: number): Promise<void> {
    return this.inner.release(rule, key, cost);
  }

  reset(rule: RateLimitRule, key: string): Promise<number> {
    return this.inner.reset(rule, key);
  }

  peek(rule: RateLimitRule, key: string): Promise<RateLimitDecision> {
    return this.inner.peek(rule, key);
  }

  forget(fragment: string): Promise<number> {
    return this.inner.forget(fragment);
  }
}
