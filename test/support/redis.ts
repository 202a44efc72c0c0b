import { randomBytes } from "node:crypto";
import Redis from "ioredis";

/** The Redis server tests use; every run works under a prefix of its own. */
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** A REDIS_PREFIX no other run or file uses, e.g. `cbt:1a2b3c4d5e6f:`. */
export function uniqueRedisPrefix(): string {
  return `cbt:${randomBytes(6).toString("hex")}:`;
}

/** Deletes every key under `prefix` (SCAN, never KEYS, so a shared server is not blocked). */
export async function deleteRedisPrefix(prefix: string): Promise<number> {
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 2 });
  let deleted = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) deleted += await redis.del(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
  return deleted;
}
