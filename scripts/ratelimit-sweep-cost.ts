/**
 * CPU per new key of the in-memory rate limiter (`MemoryRateLimiter`) when it is held at its cap
 * and each sweep finds only one window expired: 98,000 long windows, 2,000 short ones ending one
 * per clock step, then `keys` new keys each arriving as one more short window ends. A sweep that
 * returned after freeing one window scanned all 100,000 for every new key.
 *
 *   bun run scripts/ratelimit-sweep-cost.ts [keys=2000] [module=src/ratelimit/memory.ts]
 *
 * `module`: another version of memory.ts to compare (e.g. one taken with `git show`). Output: the
 * keys, CPU-seconds (user + system) and microseconds per key.
 */
import { resolve } from "node:path";
import type { MemoryRateLimiter as Limiter } from "../src/ratelimit/memory.ts";

const keys = Number(process.argv[2] ?? 2000);
const module = resolve(process.argv[3] ?? `${import.meta.dir}/../src/ratelimit/memory.ts`);
const { MemoryRateLimiter } = (await import(module)) as { MemoryRateLimiter: typeof Limiter };

let now = 0;
const limiter = new MemoryRateLimiter(() => now);
const long = { name: "long", limit: 10, windowMs: 3_600_000 };
const short = { name: "short", limit: 10, windowMs: 1000 };
const SHORT = 2000;
for (let i = 0; i < 100_000 - SHORT; i++) await limiter.hit(long, `l${i}`);
for (let i = 0; i < SHORT; i++) {
  now = i;
  await limiter.hit(short, `s${i}`);
}
const before = process.cpuUsage();
for (let i = 0; i < keys; i++) {
  now = 1000 + i;
  await limiter.hit(short, `n${i}`);
}
const used = process.cpuUsage(before);
const micros = used.user + used.system;
console.log(`${keys} new keys: ${(micros / 1e6).toFixed(2)} CPU-s, ${(micros / keys).toFixed(1)} us per key`);
