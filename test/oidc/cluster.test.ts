import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { CloseCode } from "../../src/protocol/index.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";
import { browserSignIn, deviceSignIn, oidcEnv, startWithProvider } from "./support.ts";

describe("back-channel logout in a two-node cluster on PostgreSQL, Redis and RabbitMQ", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let provider: TestProvider;
  let a: TestNode;
  let b: TestNode;

  beforeAll(async () => {
    database = await createTestDatabase();
    // One public URL for the provider (node A's); node B shares its database, Redis and RabbitMQ.
    const env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    ({ node: a, provider } = await startWithProvider("postgres", {
      database,
      env: { ...env, NODE_ID: "oidc-a" },
    }));
    b = await startTestNode("postgres", {
      database,
      env: { ...env, ...oidcEnv(provider, a.url), NODE_ID: "oidc-b" },
    });
  });
  afterAll(async () => {
    await a?.teardown();
    await b?.teardown();
    await provider?.close();
    await database?.drop();
  });

  test("the provider's logout reaches node A; the user's sockets on node B close too (4401)", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const client = api(a.url);
    const browser = await browserSignIn(a, sub);
    const first = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 31,
    });
    const device = await deviceSignIn(client, sub);
    const second = await client.post("/v1/oidc/sessions", { code: device.code, registrationId: 32 });
    const onB = await TestSocket.open(b.url, first.body.accessToken);
    const onA = await TestSocket.open(a.url, second.body.accessToken);
    // Both sockets online in the shared presence (what a revocation on any node looks up).
    const deadline = Date.now() + 10_000;
    while ((await a.presence.sockets(first.body.userId)).length < 2) {
      if (Date.now() > deadline) throw new Error("the two sockets never came online");
      await Bun.sleep(50);
    }
    expect((await a.presence.sockets(first.body.userId)).map((s) => s.nodeId).sort()).toEqual([
      "oidc-a",
      "oidc-b",
    ]);
    await provider.backchannelLogout(sub);
    expect((await onB.whenClosed(5000)).code).toBe(CloseCode.revoked);
    expect((await onA.whenClosed(5000)).code).toBe(CloseCode.revoked);
    expect((await api(b.url).get("/v1/devices", first.body.accessToken)).status).toBe(401);
  });

  test("a device code sealed by node A is polled on node B (the key comes from the shared JWT_SECRET)", async () => {
    const started = await api(a.url).post("/v1/oidc/device", {});
    expect(started.status).toBe(200);
    const { deviceCode, interval } = started.body;
    const polled = await api(b.url).post("/v1/oidc/device/poll", { deviceCode, interval });
    expect(polled.body).toEqual({ status: "pending", interval });
  });
});
