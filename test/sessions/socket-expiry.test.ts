import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { CloseCode } from "../../src/protocol/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * Access-token lifetime of these suites, seconds: what a test does before an expiry (a login, a
 * socket, a refresh and its auth frame, eight refused auth frames) and after the first one (a ping,
 * a send) must fit in half of it on a loaded machine, which 3 s did not always leave room for.
 */
const TTL_SECONDS = 6;

/** The `exp` of an access token (a JWT), Unix ms. */
function expiryOf(token: string): number {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).exp * 1000;
}

/** Resolves once the local clock has passed `at` (Unix ms): waiting for a condition, not a duration. */
async function until(at: number): Promise<void> {
  while (Date.now() < at) await Bun.sleep(Math.min(100, Math.max(1, at - Date.now())));
}

describe.each(STACKS)("sockets do not outlive their access token on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, prefix), ACCESS_TOKEN_TTL_SECONDS: String(TTL_SECONDS) },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("a socket whose token expired without renewal is closed with 4440; refresh and reconnect works", async () => {
    const me = await registerAndLogin(client);
    expect(me.expiresIn).toBe(TTL_SECONDS);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const closed = await socket.whenClosed(30_000);
    expect(closed.code).toBe(CloseCode.tokenExpired);
    expect(Date.now()).toBeGreaterThanOrEqual(expiryOf(me.accessToken) - 50);
    // What the code tells the client to do: refresh, then reconnect.
    const fresh = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    expect(fresh.status).toBe(201);
    const again = await TestSocket.open(node.url, fresh.body.accessToken);
    again.send({ type: "ping" });
    await again.next((f) => f.type === "pong");
    await again.close();
  });

  test("an auth frame with a fresh token of the same device keeps the socket open past the first token's expiry", async () => {
    const me = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const firstExpiry = expiryOf(me.accessToken);
    // Renew half a lifetime before the expiry: as long for the renewal to land before the first
    // expiry as for the ping and send after it to land before the new one (at least that much
    // later, exp being the issue time rounded up to the second plus the TTL).
    await until(firstExpiry - (TTL_SECONDS * 1000) / 2);
    const fresh = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    socket.send({ type: "auth", token: fresh.body.accessToken });
    const ok = await socket.next((f) => f.type === "auth.ok" || f.type === "error", 10_000);
    expect(ok).toEqual({ type: "auth.ok", expiresAt: expiryOf(fresh.body.accessToken) });
    expect(ok.expiresAt).toBeGreaterThan(firstExpiry);
    await until(firstExpiry + 300);
    socket.send({ type: "ping" });
    await socket.next((f) => f.type === "pong");
    const id = randomUUID();
    socket.send({
      type: "send",
      id,
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body: Buffer.from("still here").toString("base64") }],
    });
    expect((await socket.reply(id)).type).toBe("accepted");
    expect(socket.closed).toBeUndefined();
    // The renewed socket lives as long as its new token, then closes the same way.
    expect((await socket.whenClosed(30_000)).code).toBe(CloseCode.tokenExpired);
  });

  test("refused auth frames leave the expiry as it was: another device's, a forged, a malformed token", async () => {
    const me = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    const second = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 9,
    });
    const socket = await TestSocket.open(node.url, me.accessToken);
    const error = () => socket.next((f) => f.type === "error" || f.type === "auth.ok", 10_000);
    for (const token of [
      other.accessToken,
      second.body.accessToken,
      `${me.accessToken.slice(0, -4)}AAAA`,
      "x",
    ]) {
      socket.send({ type: "auth", token });
      expect(await error()).toMatchObject({ type: "error", code: "unauthorized" });
    }
    for (const frame of [
      { type: "auth" },
      { type: "auth", token: 5 },
      { type: "auth", token: "" },
      { type: "auth", token: "t", x: 1 },
    ]) {
      socket.send(frame);
      expect(await error()).toMatchObject({ type: "error", code: "invalid" });
    }
    expect(socket.frames.filter((f) => f.type === "auth.ok")).toEqual([]);
    expect((await socket.whenClosed(30_000)).code).toBe(CloseCode.tokenExpired);
  });
});
