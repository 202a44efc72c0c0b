import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { eq } from "drizzle-orm";
import { refreshTokens } from "../../src/db/schema.ts";
import { CloseCode } from "../../src/protocol/index.ts";
import { TokenIssuer } from "../../src/sessions/tokens.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * The grace window of these suites, seconds: short, so that a test can wait it out, yet long enough
 * that what a test means to do within it (eight concurrent refreshes and a retry; a refresh, its
 * successor's and a reuse) fits on a loaded machine, which 2 s did not always leave room for.
 */
const GRACE_SECONDS = 5;

describe.each(STACKS)("the refresh grace window on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, prefix), REFRESH_GRACE_SECONDS: String(GRACE_SECONDS) },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const refresh = (refreshToken: string) => client.post("/v1/sessions/refresh", { refreshToken });

  test("two concurrent refreshes with the same token: both 201 with the same successor, which works", async () => {
    const me = await registerAndLogin(client);
    const [one, two] = await Promise.all([refresh(me.refreshToken), refresh(me.refreshToken)]);
    expect([one.status, two.status]).toEqual([201, 201]);
    expect(two.body).toEqual(one.body);
    expect(one.body.refreshToken).not.toBe(me.refreshToken);
    // Not counted as theft: the successor's tokens work and rotate on.
    expect((await client.get("/v1/devices", one.body.accessToken)).status).toBe(200);
    const next = await refresh(one.body.refreshToken);
    expect(next.status).toBe(201);
    expect((await client.get("/v1/devices", next.body.accessToken)).status).toBe(200);
  });

  test("eight concurrent refreshes and a late retry within the window all get the same successor", async () => {
    const me = await registerAndLogin(client);
    const replies = await Promise.all(Array.from({ length: 8 }, () => refresh(me.refreshToken)));
    expect(replies.map((r) => r.status)).toEqual(Array(8).fill(201));
    for (const reply of replies) expect(reply.body).toEqual(replies[0].body);
    const retry = await refresh(me.refreshToken);
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual(replies[0].body);
    expect((await client.get("/v1/devices", retry.body.accessToken)).status).toBe(200);
    // Each presentation after the first is in the audit log: within the window a copied token
    // presented after the owner's looks the same, so the DPO can see how often it happens.
    const replays = (await node.audit.entriesAbout(me.userId)).filter(
      (e) => e.action === "session.refresh_replayed",
    );
    expect(replays).toHaveLength(8);
    expect(replays[0]).toMatchObject({ actor: "system", details: { deviceId: 1 } });
  });

  test("a reuse after the window is theft: 401, every token of the device revoked, its socket closed", async () => {
    const me = await registerAndLogin(client);
    const spentAt = Date.now();
    const first = await refresh(me.refreshToken);
    expect(first.status).toBe(201);
    const socket = await TestSocket.open(node.url, first.body.accessToken);
    const deadline = Date.now() + 15_000;
    while ((await node.presence.sockets(me.userId)).length < 1) {
      if (Date.now() > deadline) throw new Error("the socket never came online");
      await Bun.sleep(20);
    }
    // Wait the window out (a condition on the clock, not an asserted duration).
    while (Date.now() <= spentAt + GRACE_SECONDS * 1000 + 250) await Bun.sleep(50);
    expect((await refresh(me.refreshToken)).status).toBe(401);
    expect((await client.get("/v1/devices", first.body.accessToken)).status).toBe(401);
    expect((await refresh(first.body.refreshToken)).status).toBe(401);
    expect((await socket.whenClosed(10_000)).code).toBe(CloseCode.revoked);
  });

  test("within the window, once the successor is spent too, a reuse is theft again", async () => {
    const me = await registerAndLogin(client);
    const first = await refresh(me.refreshToken);
    const second = await refresh(first.body.refreshToken);
    expect(second.status).toBe(201);
    expect((await refresh(me.refreshToken)).status).toBe(401);
    expect((await client.get("/v1/devices", second.body.accessToken)).status).toBe(401);
    expect((await refresh(second.body.refreshToken)).status).toBe(401);
  });

  test("an expired refresh token presented again is 401, never theft: the device signed in again keeps its session", async () => {
    const me = await registerAndLogin(client);
    await node.database.db
      .update(refreshTokens)
      .set({ expiresAt: new Date(Date.now() - 1000) })
      .where(eq(refreshTokens.tokenHash, TokenIssuer.hashRefreshToken(me.refreshToken)));
    const expired = await refresh(me.refreshToken);
    expect(expired.status).toBe(401);
    expect(expired.body.error.code).toBe("unauthorized");
    // The client signs in again on the same device, and a retry of the old token (another
    // process of the same client, a resent request) comes in after.
    const again = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      deviceId: me.deviceId,
    });
    expect(again.status).toBe(201);
    const socket = await TestSocket.open(node.url, again.body.accessToken);
    for (let i = 0; i < 2; i++) expect((await refresh(me.refreshToken)).status).toBe(401);
    expect((await client.get("/v1/devices", again.body.accessToken)).status).toBe(200);
    const next = await refresh(again.body.refreshToken);
    expect(next.status).toBe(201);
    socket.send({ type: "ping" });
    expect((await socket.next((f) => f.type === "pong", 10_000)).type).toBe("pong");
    expect(socket.closed).toBeUndefined();
    socket.ws.close();
  });
});
