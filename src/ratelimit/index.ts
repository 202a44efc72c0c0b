export { MemoryRateLimiter } from "./memory.ts";
export { RedisRateLimiter } from "./redis.ts";
export type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";
