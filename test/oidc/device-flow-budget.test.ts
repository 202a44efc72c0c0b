import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DeviceCodeSealer } from "../../src/oidc/device-code.ts";
import { DEVICE_FLOW_LIMITS } from "../../src/oidc/service.ts";
import { type Api, api } from "../support/http.ts";
import type { TestNode } from "../support/node.ts";
import { TestBrowser, type TestProvider } from "../support/oidc-provider.ts";
import { startWithProvider } from "./support.ts";

// Every start and poll of the native flow is a request from ClearBox to the provider, made for
// anyone who asks: without budgets, one client could make the provider throttle ClearBox's client
// id for every user. The budgets must not let one client behind a shared address (a school's NAT,
// an IPv6 /64) lock its neighbours out either: the device code handed out is sealed, so made-up
// codes are refused before any budget, and polls are counted per code.
describe("the native sign-in flow's budgets", () => {
  /** OIDC_DEVICE_SIGN_INS_PER_ADDRESS of the node: not the default, to see the setting obeyed. */
  const STARTS = 5;
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider("pglite", {
      env: { TRUSTED_PROXIES: "127.0.0.1,::1", OIDC_DEVICE_SIGN_INS_PER_ADDRESS: String(STARTS) },
    }));
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  /** A request from `address`, through the trusted proxy 127.0.0.1. */
  const from = (address: string, path: string, body: unknown) =>
    client.call("POST", path, { body, headers: { "x-forwarded-for": address } });

  /** `count` polls of `deviceCode` from `address`, 100 at a time; their answers' HTTP statuses and bodies. */
  async function pollMany(address: string, deviceCode: string, count: number) {
    const replies: { status: number; body: any }[] = [];
    for (let sent = 0; sent < count; sent += 100) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(100, count - sent) }, () =>
          from(address, "/v1/oidc/device/poll", { deviceCode, interval: 5 }),
        ),
      );
      replies.push(...batch.map(({ status, body }) => ({ status, body })));
    }
    return replies;
  }

  test("past OIDC_DEVICE_SIGN_INS_PER_ADDRESS starts in 15 minutes an address is answered 429 without asking the provider; another address is not", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < STARTS; i++)
      statuses.push((await from("203.0.113.20", "/v1/oidc/device", {})).status);
    expect(statuses.every((status) => status === 200)).toBe(true);
    const refused = await from("203.0.113.20", "/v1/oidc/device", {});
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(60);
    expect((await from("203.0.113.21", "/v1/oidc/device", {})).status).toBe(200);
  });

  test("a device code this server did not issue is refused 401 without the provider being asked, and thousands of them do not hold up a real sign-in from the same address", async () => {
    const address = "203.0.113.30";
    const started = await from(address, "/v1/oidc/device", {});
    expect(started.status).toBe(200);
    const { deviceCode, userCode, verificationUri, interval } = started.body;
    const altered = `${deviceCode.slice(0, -2)}${deviceCode.endsWith("AA") ? "BB" : "AA"}`;
    const foreign = await new DeviceCodeSealer("another node's secret, not this cluster's").seal("x", 600);
    const asked = provider.tokenRequests;
    // More made-up polls than the whole address was allowed before (1,800 per 15 minutes).
    const forged = [
      ...(await pollMany(address, "made-up", 1_900)),
      ...(await pollMany(address, altered, 50)),
      ...(await pollMany(address, foreign, 50)),
    ];
    expect(forged.filter((reply) => reply.status === 401)).toHaveLength(2_000);
    expect(forged[0].body.error.code).toBe("unauthorized");
    expect(provider.tokenRequests).toBe(asked);

    // The classmate's sign-in, from the same address, still reaches the provider and completes.
    const pending = await from(address, "/v1/oidc/device/poll", { deviceCode, interval });
    expect(pending.body).toEqual({ status: "pending", interval });
    expect(provider.tokenRequests).toBe(asked + 1);
    await new TestBrowser().walk(verificationUri, { login: "classmate", userCode, stop: () => false });
    const done = await from(address, "/v1/oidc/device/poll", { deviceCode, interval });
    expect(done.status).toBe(200);
    expect(done.body.status).toBe("done");
    const session = await from(address, "/v1/oidc/sessions", { code: done.body.code, registrationId: 1 });
    expect(session.status).toBe(201);
  });

  test("past its own budget a device code is told slow_down without the provider being asked; another code from the same address is not", async () => {
    const address = "203.0.113.50";
    const { limit } = DEVICE_FLOW_LIMITS.pollsPerCode;
    const first = await from(address, "/v1/oidc/device", {});
    const second = await from(address, "/v1/oidc/device", {});
    expect([first.status, second.status]).toEqual([200, 200]);
    const polled = await pollMany(address, first.body.deviceCode, limit);
    expect(polled.filter((reply) => reply.body.status === "pending")).toHaveLength(limit);
    const asked = provider.tokenRequests;
    const slowed = await from(address, "/v1/oidc/device/poll", {
      deviceCode: first.body.deviceCode,
      interval: 5,
    });
    expect(slowed.status).toBe(200);
    expect(slowed.body).toEqual({ status: "slow_down", interval: 10 });
    expect(provider.tokenRequests).toBe(asked);
    const other = await from(address, "/v1/oidc/device/poll", {
      deviceCode: second.body.deviceCode,
      interval: 5,
    });
    expect(other.body).toEqual({ status: "pending", interval: 5 });
    expect(provider.tokenRequests).toBe(asked + 1);
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
