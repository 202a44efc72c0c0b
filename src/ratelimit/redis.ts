import type { Redis } from "ioredis";
import { deleteMatching, globLiteral } from "../redis/delete-matching.ts";
import type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";

/**
 * INCRBY the hit's cost (ARGV[2]) and, on the window's first hit, PEXPIRE, in one atomic step;
 * returns [count, ms left].
 */
const HIT_SCRIPT = `
local cost = tonumber(ARGV[2])
local count = redis.call("INCRBY", KEYS[1], cost)
if count == cost then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
local ttl = redis.call("PTTL", KEYS[1])
if ttl < 0 then redis.call("PEXPIRE", KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}`;

/** DECRBY a live counter by ARGV[1], at most down to zero (never creates one, never goes negative). */
const RELEASE_SCRIPT = `
local count = tonumber(redis.call("GET", KEYS[1]) or "0")
if count > 0 then redis.call("DECRBY", KEYS[1], math.min(count, tonumber(ARGV[1]))) end
return count`;

/** Counters in Redis, shared by every node of a cluster. Keys: `<prefix>rl:<rule>:<key>`. */
export class RedisRateLimiter implements RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  async hit(rule: RateLimitRule, key: string, cost = 1): Promise<RateLimitDecision> {
    const [count, ttl] = (await this.redis.eval(
      HIT_SCRIPT,
      1,
      `${this.prefix}rl:${rule.name}:${key}`,
      rule.windowMs,
      cost,
    )) as [number, number];
    if (count <= rule.limit) return { allowed: true };
    return { allowed: false, retryAfterMs: ttl };
  }

  async release(rule: RateLimitRule, key: string, cost = 1): Promise<void> {
    await this.redis.eval(RELEASE_SCRIPT, 1, `${this.prefix}rl:${rule.name}:${key}`, cost);
  }

  reset(rule: RateLimitRule, key: string): Promise<number> {
    return this.redis.del(`${this.prefix}rl:${rule.name}:${key}`);
  }

  async peek(rule: RateLimitRule, key: string): Promise<RateLimitDecision> {
    const id = `${this.prefix}rl:${rule.name}:${key}`;
    const [[, count], [, ttl]] = (await this.redis.multi().get(id).pttl(id).exec()) as [
      [unknown, string | null],
      [unknown, number],
    ];
    if (count === null || Number(count) < rule.limit || ttl <= 0) return { allowed: true };
    return { allowed: false, retryAfterMs: ttl };
  }

  forget(fragment: string): Promise<number> {
    return deleteMatching(this.redis, `${globLiteral(this.prefix)}rl:*${globLiteral(fragment)}*`);
  }
}
