/**
 * A budget: at most `limit` hits per `windowMs` for one key. `name` keeps budgets apart in storage.
 * A hit may weigh more than one (`cost`): a budget of bytes counts each send's bytes.
 */
export interface RateLimitRule {
  name: string;
  limit: number;
  windowMs: number;
}

/** The answer to one hit: allowed, or refused with the time until the window resets. */
export type RateLimitDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

/**
 * Fixed-window rate limiting. Each `hit` counts, refused ones included, so a client that keeps
 * hammering stays refused until the window ends.
 */
export interface RateLimiter {
  /**
   * Counts `cost` (a positive integer, 1 by default) against the key's window and answers whether
   * the window's total is still within `rule.limit`.
   */
  hit(rule: RateLimitRule, key: string, cost?: number): Promise<RateLimitDecision>;
  /**
   * Gives `cost` (1 by default) back to the key's current window (an attempt counted in advance
   * that turned out fine, or one refused that stored nothing); never below zero, never a new window.
   */
  release(rule: RateLimitRule, key: string, cost?: number): Promise<void>;
  /** Drops one key's counter (erasure of the person it names); returns how many were dropped. */
  reset(rule: RateLimitRule, key: string): Promise<number>;
  /** Whether the next hit would be allowed, without counting one. */
  peek(rule: RateLimitRule, key: string): Promise<RateLimitDecision>;
  /** Drops every counter whose key contains `fragment` (erasure of a user); returns how many. */
  forget(fragment: string): Promise<number>;
}
