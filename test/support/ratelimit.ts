import { afterAll, beforeAll } from "bun:test";
import Redis from "ioredis";
import { MemoryRateLimiter, type RateLimiter, RedisRateLimiter } from "../../src/ratelimit/index.ts";
import { deleteRedisPrefix, TEST_REDIS_URL, uniqueRedisPrefix } from "./redis.ts";

/**
 * Both RateLimiter implementations for `describe.each`: memory, and Redis on the test server under a
 * prefix of the calling file's own. Call at the top level of a file or `describe`: it connects to
 * Redis before that scope's tests and disconnects and deletes the prefix's keys after them.
 * `limiters` make a fresh limiter each; `redis()` is the connection (for reading keys), `prefix` its
 * key prefix.
 */
export function limitersUnderTest(): {
  limiters: [kind: string, make: () => RateLimiter][];
  redis: () => Redis;
  prefix: string;
} {
  const prefix = uniqueRedisPrefix();
  let connection: Redis | undefined;
  beforeAll(() => {
    connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 2 });
  });
  afterAll(async () => {
    connection?.disconnect();
    await deleteRedisPrefix(prefix);
  });
  const redis = () => {
    if (!connection) throw new Error("limitersUnderTest: Redis is connected in beforeAll");
    return connection;
  };
  return {
    limiters: [
      ["memory", () => new MemoryRateLimiter()],
      ["redis", () => new RedisRateLimiter(redis(), prefix)],
    ],
    redis,
    prefix,
  };
}
