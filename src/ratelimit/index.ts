export {
  ClientAddresses,
  clientAddressPlugin,
  parseTrustedProxies,
  UNKNOWN_ADDRESS,
} from "./client-address.ts";
export { CountingRateLimiter } from "./counting.ts";
export { MEMORY_RATE_LIMIT_KEYS, MemoryRateLimiter } from "./memory.ts";
export { RedisRateLimiter } from "./redis.ts";
export { rateLimitedError, spendDeviceThenAccount, spendOrRefuse } from "./refusal.ts";
export type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";
