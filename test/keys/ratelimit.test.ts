import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  type CountingRateLimiter,
  MEMORY_RATE_LIMIT_KEYS,
  MemoryRateLimiter,
  RedisRateLimiter,
} from "../../src/ratelimit/index.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { limitersUnderTest } from "../support/ratelimit.ts";
import { deleteRedisPrefix, TEST_REDIS_URL, uniqueRedisPrefix } from "../support/redis.ts";
import { validUpload } from "./fixtures.ts";

const { limiters, redis, prefix } = limitersUnderTest();

describe.each(limiters)("%s rate limiter", (_kind, make) => {
  test("allows `limit` hits per key, then refuses with the time left in the window", async () => {
    const limiter = make();
    const rule = { name: `t${Math.random()}`, limit: 3, windowMs: 60_000 };
    for (let i = 0; i < 3; i++) expect(await limiter.hit(rule, "a")).toEqual({ allowed: true });
    const refused = await limiter.hit(rule, "a");
    expect(refused.allowed).toBe(false);
    if (!refused.allowed) {
      expect(refused.retryAfterMs).toBeGreaterThan(50_000);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(60_000);
    }
    // Another key, or the same key under another rule, has a budget of its own.
    expect(await limiter.hit(rule, "b")).toEqual({ allowed: true });
    expect(await limiter.hit({ ...rule, name: `${rule.name}-other` }, "a")).toEqual({ allowed: true });
  });

  test("a new window starts once the old one has passed", async () => {
    const limiter = make();
    // Long enough that the two hits land in one window on a loaded machine (at 150 ms a stall
    // between them let the second open a new window and pass); the wait is the window, counted
    // from the first hit's answer (the window opened before it).
    const rule = { name: `t${Math.random()}`, limit: 1, windowMs: 1500 };
    expect((await limiter.hit(rule, "a")).allowed).toBe(true);
    const windowEnds = Date.now() + rule.windowMs;
    expect((await limiter.hit(rule, "a")).allowed).toBe(false);
    await Bun.sleep(Math.max(0, windowEnds - Date.now()) + 50);
    expect((await limiter.hit(rule, "a")).allowed).toBe(true);
  });

  test("peek answers like the next hit would, without counting", async () => {
    const limiter = make();
    const rule = { name: `t${Math.random()}`, limit: 2, windowMs: 60_000 };
    for (let i = 0; i < 5; i++) expect(await limiter.peek(rule, "a")).toEqual({ allowed: true });
    await limiter.hit(rule, "a");
    expect(await limiter.peek(rule, "a")).toEqual({ allowed: true });
    await limiter.hit(rule, "a");
    const blocked = await limiter.peek(rule, "a");
    expect(blocked.allowed).toBe(false);
    if (!blocked.allowed) expect(blocked.retryAfterMs).toBeGreaterThan(50_000);
    expect(await limiter.peek(rule, "b")).toEqual({ allowed: true });
  });

  test("forget drops every counter whose key names the fragment, and only those", async () => {
    const limiter = make();
    const rule = { name: `t${Math.random()}`, limit: 1, windowMs: 60_000 };
    await limiter.hit(rule, "device-of-user-X");
    await limiter.hit(rule, "user-Y");
    expect(await limiter.forget("user-X")).toBe(1);
    expect((await limiter.hit(rule, "device-of-user-X")).allowed).toBe(true);
    expect((await limiter.hit(rule, "user-Y")).allowed).toBe(false);
  });

  test("of 50 concurrent hits under a limit of 20, exactly 20 are allowed", async () => {
    const limiter = make();
    const rule = { name: `t${Math.random()}`, limit: 20, windowMs: 60_000 };
    const decisions = await Promise.all(Array.from({ length: 50 }, () => limiter.hit(rule, "a")));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(20);
  });
});

describe("memory limiter at its cap of tracked keys", () => {
  // The embedded default's only limiter. A flood of distinct keys (key fetches of many users from
  // many devices, or logins from many IPv6 networks) fills it; what it drops then must not be the
  // counters that are refusing, or the flood resets a password guesser's budget.
  test("a flood of new keys does not drop a window at its limit", async () => {
    const limiter = new MemoryRateLimiter();
    const failures = { name: "login-failures", limit: 10, windowMs: 60_000 };
    for (let i = 0; i < 10; i++) await limiter.hit(failures, "victim");
    expect((await limiter.peek(failures, "victim")).allowed).toBe(false);
    const fetches = { name: "keys.target", limit: 20, windowMs: 60_000 };
    for (let i = 0; i < MEMORY_RATE_LIMIT_KEYS + 10; i++) await limiter.hit(fetches, `device:${i}`);
    expect((await limiter.peek(failures, "victim")).allowed).toBe(false);
    expect((await limiter.hit(failures, "victim")).allowed).toBe(false);
  });

  test("a window close to its limit outlives the flood's fresh ones", async () => {
    const limiter = new MemoryRateLimiter();
    const failures = { name: "login-failures", limit: 10, windowMs: 60_000 };
    for (let i = 0; i < 9; i++) await limiter.hit(failures, "victim");
    const fetches = { name: "keys.target", limit: 20, windowMs: 60_000 };
    for (let i = 0; i < 2 * MEMORY_RATE_LIMIT_KEYS; i++) await limiter.hit(fetches, `device:${i}`);
    // The tenth failure is still the last one allowed.
    expect((await limiter.hit(failures, "victim")).allowed).toBe(true);
    expect((await limiter.hit(failures, "victim")).allowed).toBe(false);
  });

  test("windows pushed past a cheap rule's limit do not evict another rule's refusing window", async () => {
    // Refused sign-ups cost nothing to send and keep counting: 11 from each of many IPv6 /64s make
    // windows past their limit (fill 1.1). Ranked against every rule's windows, they outranked a
    // password guesser's account-wide failure count (fill 1.0), which was dropped: 100 more guesses.
    const limiter = new MemoryRateLimiter(Date.now, 1_000);
    const failures = { name: "login-failures", limit: 100, windowMs: 60_000 };
    for (let i = 0; i < 100; i++) await limiter.hit(failures, "victim");
    expect((await limiter.peek(failures, "victim")).allowed).toBe(false);
    const registrations = { name: "registrations", limit: 10, windowMs: 60_000 };
    for (let net = 0; net < 2_000; net++)
      for (let i = 0; i < 11; i++) await limiter.hit(registrations, `2001:db8:${net}::/64`);
    expect((await limiter.peek(failures, "victim")).allowed).toBe(false);
  });

  test("a sweep that finds only a few windows expired still makes room for many new keys", async () => {
    // Each sweep scans every window. Returning as soon as one expired window was dropped left the
    // map full, and every following new key paid a whole scan again; now a sweep that frees less
    // than a quarter of the cap drops live windows down to half (the oldest of equal fill first).
    let now = 0;
    const limiter = new MemoryRateLimiter(() => now, 1_000);
    const long = { name: "long", limit: 1, windowMs: 60_000 };
    const short = { name: "short", limit: 1, windowMs: 10 };
    for (let i = 0; i < 998; i++) await limiter.hit(long, `l${i}`);
    await limiter.hit(short, "s0");
    await limiter.hit(short, "s1");
    expect((await limiter.peek(long, "l0")).allowed).toBe(false);
    now = 20; // the two short windows have ended; the map is still full
    await limiter.hit(long, "new");
    expect((await limiter.peek(long, "l0")).allowed).toBe(true);
    expect((await limiter.peek(long, "l997")).allowed).toBe(false);
    expect((await limiter.peek(long, "new")).allowed).toBe(false);
  });
});

test("Redis limiter keys carry REDIS_PREFIX and expire with their window", async () => {
  const limiter = new RedisRateLimiter(redis(), prefix);
  await limiter.hit({ name: "ttl", limit: 5, windowMs: 30_000 }, "k");
  const ttl = await redis().pttl(`${prefix}rl:ttl:k`);
  expect(ttl).toBeGreaterThan(25_000);
  expect(ttl).toBeLessThanOrEqual(30_000);
});

describe("a node with REDIS_URL", () => {
  let node: TestNode;
  const nodePrefix = uniqueRedisPrefix();

  beforeAll(async () => {
    // A clustered node (Redis set) also needs its node-to-node transport, RabbitMQ.
    const AMQP_URL = process.env.TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
    node = await startTestNode("pglite", {
      env: { REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: nodePrefix, AMQP_URL },
    });
  });
  afterAll(async () => {
    await node?.teardown();
    await deleteRedisPrefix(nodePrefix);
  });

  test("reports Redis in /readyz and counts key fetches in Redis, refusing the 21st with 429", async () => {
    const client = api(node.url);
    const ready = await client.get("/readyz");
    expect(ready.status).toBe(200);
    expect(ready.body.services.redis).toBe("ok");
    expect((node.rateLimiter as CountingRateLimiter).inner).toBeInstanceOf(RedisRateLimiter);

    const target = await registerAndLogin(client);
    expect((await client.put("/v1/keys", (await validUpload(1)).upload, target.accessToken)).status).toBe(
      204,
    );
    const reader = await registerAndLogin(client);
    for (let i = 0; i < 20; i++) {
      expect((await client.get(`/v1/keys/${target.userId}`, reader.accessToken)).status).toBe(200);
    }
    const refused = await client.get(`/v1/keys/${target.userId}`, reader.accessToken);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    const counter = await redis().get(
      `${nodePrefix}rl:keys.target:${reader.userId}.${reader.deviceId}:${target.userId}`,
    );
    expect(Number(counter)).toBe(21);
  });
});
