import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { ClientAddresses } from "../../src/ratelimit/index.ts";
import { type Api, api, registerAndLogin, uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { deleteRedisPrefix, TEST_REDIS_URL, uniqueRedisPrefix } from "../support/redis.ts";

const AMQP_URL = process.env.TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** A client whose requests come, through the trusted proxy 127.0.0.1, from `address`. */
function from(client: Api, address: string) {
  return (path: string, body: unknown, token?: string, method = "POST") =>
    client.call(method, path, { body, token, headers: { "x-forwarded-for": address } });
}

/** Counts of each status in a list of replies, e.g. `{ 401: 10, 429: 30 }`. */
function tally(statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

/** The throttle's behaviour, run against the in-memory limiter and against Redis. */
function throttleSuite(name: string, env: () => Record<string, string>) {
  describe(`login throttle (${name})`, () => {
    let node: TestNode;
    let client: Api;

    beforeAll(async () => {
      node = await startTestNode("pglite", {
        env: {
          TRUSTED_PROXIES: "127.0.0.1,::1",
          LOGIN_ATTEMPTS_PER_ADDRESS: "60",
          LOGIN_FAILURES_PER_ADDRESS: "10",
          LOGIN_FAILURES_PER_ACCOUNT: "25",
          ...env(),
        },
      });
      client = api(node.url);
    });
    afterAll(() => node?.teardown());

    test("40 parallel wrong logins then the right one: 10 checked, 30 refused, and the owner logs in from elsewhere", async () => {
      const me = await registerAndLogin(client);
      const attacker = from(client, "203.0.113.7");
      const replies = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          attacker("/v1/sessions", { username: me.username, password: `wrong guess ${i}`, deviceId: 1 }),
        ),
      );
      // Counted before the check, atomically: no race lets an 11th guess through.
      expect(tally(replies.map((r) => r.status))).toEqual({ 401: 10, 429: 30 });
      const refused = replies.find((r) => r.status === 429);
      expect(refused?.body.error.code).toBe("rate_limited");
      expect(Number(refused?.headers.get("retry-after"))).toBeGreaterThan(60);
      // The right password from the guessing address waits too...
      const right = { username: me.username, password: me.password, deviceId: 1 };
      expect((await attacker("/v1/sessions", right)).status).toBe(429);
      // ...but the owner, elsewhere, is not locked out.
      expect((await from(client, "198.51.100.9")("/v1/sessions", right)).status).toBe(201);
    });

    test("a right password forgives that address's failures for the account", async () => {
      const me = await registerAndLogin(client);
      const typist = from(client, "192.0.2.10");
      for (let i = 0; i < 9; i++) {
        expect(
          (await typist("/v1/sessions", { username: me.username, password: `typo number ${i}` })).status,
        ).toBe(401);
      }
      const right = { username: me.username, password: me.password, deviceId: 1 };
      expect((await typist("/v1/sessions", right)).status).toBe(201);
      const again = [];
      for (let i = 0; i < 10; i++) {
        again.push(
          (await typist("/v1/sessions", { username: me.username, password: `typo number ${i}` })).status,
        );
      }
      expect(tally(again)).toEqual({ 401: 10 });
    });

    test("guesses spread over many addresses stop at LOGIN_FAILURES_PER_ACCOUNT, which no single address can reach", async () => {
      const me = await registerAndLogin(client);
      const statuses: number[] = [];
      // Three addresses, ten guesses each: 25 for the account in all, then refused from anywhere.
      for (const address of ["198.51.100.21", "198.51.100.22", "198.51.100.23"]) {
        for (let i = 0; i < 10; i++) {
          statuses.push(
            (
              await from(client, address)("/v1/sessions", {
                username: me.username,
                password: `guess number ${i}`,
              })
            ).status,
          );
        }
      }
      expect(tally(statuses)).toEqual({ 401: 25, 429: 5 });
      const fresh = from(client, "198.51.100.24");
      expect((await fresh("/v1/sessions", { username: me.username, password: "another guess" })).status).toBe(
        429,
      );
    });

    test("an address is limited across accounts (credential stuffing), and unknown usernames count like known ones", async () => {
      const stuffer = from(client, "192.0.2.99");
      const statuses: number[] = [];
      for (let i = 0; i < 61; i++) {
        statuses.push(
          (await stuffer("/v1/sessions", { username: uniqueUsername("nobody"), password: "password123" }))
            .status,
        );
      }
      expect(tally(statuses)).toEqual({ 401: 60, 429: 1 });
      // Even a right password is not checked from that address for the rest of the window.
      const me = await registerAndLogin(client);
      expect(
        (await stuffer("/v1/sessions", { username: me.username, password: me.password, deviceId: 1 })).status,
      ).toBe(429);
    });

    test("successful logins of one account are budgeted too (LOGINS_PER_ACCOUNT), which only the password's owner can spend", async () => {
      const me = await registerAndLogin(client);
      const right = { username: me.username, password: me.password, deviceId: 1 };
      const statuses: number[] = [];
      // registerAndLogin spent one already; the budget is 30 per 15 minutes.
      for (let i = 0; i < 30; i++)
        statuses.push((await from(client, `192.0.2.${100 + (i % 3)}`)("/v1/sessions", right)).status);
      expect(tally(statuses)).toEqual({ 201: 29, 429: 1 });
    });

    test("DELETE /v1/me checks the password through the same throttle, and a refused erasure erases nothing", async () => {
      const me = await registerAndLogin(client);
      const thief = from(client, "203.0.113.50");
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) {
        statuses.push(
          (await thief("/v1/me", { password: `guess number ${i}` }, me.accessToken, "DELETE")).status,
        );
      }
      expect(tally(statuses)).toEqual({ 401: 10, 429: 2 });
      expect((await thief("/v1/me", { password: me.password }, me.accessToken, "DELETE")).status).toBe(429);
      // Login from that address shares the budget of the account.
      expect(
        (await thief("/v1/sessions", { username: me.username, password: me.password, deviceId: 1 })).status,
      ).toBe(429);
      const rows = await node.database.db.execute(
        sql`select count(*)::int as n from accounts where id = ${me.userId}`,
      );
      const count = ((rows as unknown as { rows?: { n: number }[] }).rows ??
        (rows as unknown as { n: number }[]))[0];
      expect(count.n).toBe(1);
      // The owner, from elsewhere, can still erase the account.
      expect(
        (await from(client, "198.51.100.77")("/v1/me", { password: me.password }, me.accessToken, "DELETE"))
          .status,
      ).toBe(202);
    });
  });
}

throttleSuite("memory", () => ({}));

const prefix = uniqueRedisPrefix();
throttleSuite("Redis", () => ({ REDIS_URL: TEST_REDIS_URL, REDIS_PREFIX: prefix, AMQP_URL }));
afterAll(() => deleteRedisPrefix(prefix));

describe("X-Forwarded-For without a trusted proxy", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // TRUSTED_PROXIES unset: the header is the client's own claim and is ignored.
    node = await startTestNode("pglite", { env: { LOGIN_ATTEMPTS_PER_ADDRESS: "60" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("a client cannot dodge its failure budget by claiming another address", async () => {
    const me = await registerAndLogin(client);
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) {
      statuses.push(
        (
          await from(client, `203.0.113.${i}`)("/v1/sessions", {
            username: me.username,
            password: `wrong password ${i}`,
          })
        ).status,
      );
    }
    expect(tally(statuses)).toEqual({ 401: 10, 429: 1 });
  });
});

describe("ClientAddresses", () => {
  const behindProxy = new ClientAddresses(["10.0.0.0/8", "::1"]);

  test("the peer is the client unless it is a trusted proxy", () => {
    expect(behindProxy.resolve("198.51.100.1", "203.0.113.5")).toBe("198.51.100.1");
    expect(behindProxy.resolve("10.1.2.3", "203.0.113.5")).toBe("203.0.113.5");
    expect(new ClientAddresses().resolve("10.1.2.3", "203.0.113.5")).toBe("10.1.2.3");
  });

  test("X-Forwarded-For is read from the right, past trusted hops, never trusting what the client wrote", () => {
    // The client wrote 1.1.1.1 itself; 203.0.113.5 is what the first trusted proxy saw.
    expect(behindProxy.resolve("10.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.9")).toBe("203.0.113.5");
    // Garbage stops the walk at the last trusted hop.
    expect(behindProxy.resolve("10.0.0.1", "203.0.113.5, not-an-ip")).toBe("10.0.0.1");
    expect(behindProxy.resolve("10.0.0.1", "")).toBe("10.0.0.1");
  });

  test("IPv4 on a dual-stack socket is plain IPv4; IPv6 clients count by their /64", () => {
    expect(behindProxy.resolve("::ffff:198.51.100.3", null)).toBe("198.51.100.3");
    expect(behindProxy.resolve("2001:DB8:1:2:aaaa::1", null)).toBe("2001:db8:1:2::/64");
    expect(behindProxy.resolve("2001:db8:1:2:bbbb:cccc:dddd:eeee", null)).toBe("2001:db8:1:2::/64");
    expect(behindProxy.resolve("::1", "2001:db8::7")).toBe("2001:db8:0:0::/64");
    expect(behindProxy.resolve(undefined, "203.0.113.5")).toBe("unknown");
  });
});
