import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DEVICE_FLOW_LIMITS } from "../../src/oidc/service.ts";
import { type Api, api } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { freePort, TestProvider } from "../support/oidc-provider.ts";
import { oidcEnv } from "./support.ts";

// Every start and poll of the native flow is a request from ClearBox to the provider, made for
// anyone who asks: without a budget per address, one client could make the provider throttle
// ClearBox's client id for every user.
describe("the native sign-in flow's budgets per client address", () => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;

  beforeAll(async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    provider = await TestProvider.start(url);
    node = await startTestNode("pglite", {
      env: { PORT: String(port), TRUSTED_PROXIES: "127.0.0.1,::1", ...oidcEnv(provider, url) },
    });
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  /** A request from `address`, through the trusted proxy 127.0.0.1. */
  const from = (address: string, path: string, body: unknown) =>
    client.call("POST", path, { body, headers: { "x-forwarded-for": address } });

  test("past 30 starts in 15 minutes an address is answered 429 without asking the provider; another address is not", async () => {
    const { limit } = DEVICE_FLOW_LIMITS.starts;
    const statuses: number[] = [];
    for (let i = 0; i < limit; i++) statuses.push((await from("203.0.113.20", "/v1/oidc/device", {})).status);
    expect(statuses.every((status) => status === 200)).toBe(true);
    const refused = await from("203.0.113.20", "/v1/oidc/device", {});
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(60);
    expect((await from("203.0.113.21", "/v1/oidc/device", {})).status).toBe(200);
  });

  test("past 1,800 polls in 15 minutes an address is told slow_down without the provider being asked", async () => {
    const { limit } = DEVICE_FLOW_LIMITS.polls;
    const poll = () => from("203.0.113.30", "/v1/oidc/device/poll", { deviceCode: "made-up", interval: 5 });
    let unknown = 0;
    for (let sent = 0; sent < limit; sent += 100) {
      const batch = await Promise.all(Array.from({ length: Math.min(100, limit - sent) }, poll));
      unknown += batch.filter((reply) => reply.status === 401).length;
    }
    // The provider did not know the made-up code each time it was asked.
    expect(unknown).toBe(limit);
    const slowed = await poll();
    expect(slowed.status).toBe(200);
    expect(slowed.body).toEqual({ status: "slow_down", interval: 10 });
    // Another address's poll still reaches the provider.
    expect(
      (await from("203.0.113.31", "/v1/oidc/device/poll", { deviceCode: "made-up", interval: 5 })).status,
    ).toBe(401);
  });

  test("the provider's own slow_down adds 5 s up to 600 s, so the client's next poll with it is still accepted", async () => {
    const started = await from("203.0.113.40", "/v1/oidc/device", {});
    expect(started.status).toBe(200);
    const { deviceCode } = started.body;
    // The user has not approved yet: the provider answers authorization_pending, turned into its slow_down.
    provider.tamperErrors = (body) =>
      body.error === "authorization_pending" ? { ...body, error: "slow_down" } : body;
    try {
      const intervals: number[] = [];
      let interval = 590;
      for (let i = 0; i < 4; i++) {
        const polled = await from("203.0.113.40", "/v1/oidc/device/poll", { deviceCode, interval });
        expect({ status: polled.status, answer: polled.body.status }).toEqual({
          status: 200,
          answer: "slow_down",
        });
        interval = polled.body.interval;
        intervals.push(interval);
      }
      expect(intervals).toEqual([595, 600, 600, 600]);
    } finally {
      provider.tamperErrors = undefined;
    }
    // Untouched, the provider's answer is pending again, with the interval as the client sent it.
    const pending = await from("203.0.113.40", "/v1/oidc/device/poll", { deviceCode, interval: 600 });
    expect(pending.body).toEqual({ status: "pending", interval: 600 });
  });
});
