import type { Redis } from "ioredis";

/**
 * Deletes every key matching a glob `pattern`, walking the keyspace with SCAN (never KEYS, which
 * blocks Redis); returns how many were deleted. Glob characters in `pattern` are the caller's.
 */
export async function deleteMatching(redis: Redis, pattern: string): Promise<number> {
  let cursor = "0";
  let removed = 0;
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = next;
    if (keys.length > 0) removed += await redis.unlink(...keys);
  } while (cursor !== "0");
  return removed;
}

/** Escapes glob metacharacters so a user id is matched literally inside a pattern. */
export function globLiteral(text: string): string {
  return text.replace(/[*?[\]\\]/g, "\\$&");
}
