export {
  ClientAddresses,
  clientAddressPlugin,
  parseTrustedProxies,
  UNKNOWN_ADDRESS,
} from "./client-address.ts";
export { CountingRateLimiter } from "./counting.ts";
export { MemoryRateLimiter } from "./memory.ts";
export { RedisRateLimiter } from "./redis.ts";
export type { RateLimitDecision, RateLimiter, RateLimitRule } from "./types.ts";
