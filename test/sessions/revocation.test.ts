import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { CloseCode } from "../../src/protocol/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin, type SessionBody } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** A 1:1 send frame of one ciphertext (plain text in base64 here) to device 1 of `to`. */
function direct(to: string, text: string) {
  return {
    type: "send",
    id: randomUUID(),
    to: { user: to },
    messages: [{ deviceId: 1, type: 3, body: b64(text) }],
  };
}

/** Waits until `count` sockets of the user hold presence leases (they are online on their node). */
async function online(node: TestNode, userId: string, count: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await node.presence.sockets(userId)).length < count) {
    if (Date.now() > deadline) throw new Error(`${count} sockets never came online`);
    await Bun.sleep(20);
  }
}

describe.each(STACKS)("revocation reaches live sockets on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    // No grace window: a second presentation of a refresh token is always the theft signal here.
    node = await startTestNode(backend, { env: { ...stackEnv(stack, prefix), REFRESH_GRACE_SECONDS: "0" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** An account with `devices` logged-in devices (device 1 from registerAndLogin). */
  async function account(devices = 1) {
    const first = await registerAndLogin(client);
    const sessions: SessionBody[] = [first];
    for (let i = 1; i < devices; i++) {
      const more = await client.post("/v1/sessions", {
        username: first.username,
        password: first.password,
        registrationId: 100 + i,
      });
      expect(more.status).toBe(201);
      sessions.push(more.body);
    }
    return { ...first, sessions };
  }

  test("a replayed refresh token closes the device's socket (4401); a send after the replay is not accepted", async () => {
    const alice = await account();
    const bob = await account();
    const socket = await TestSocket.open(node.url, alice.accessToken);
    await online(node, alice.userId, 1);
    const first = await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken });
    expect(first.status).toBe(201);
    const replay = await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken });
    expect(replay.status).toBe(401);
    // Sent after the server answered the replay: the socket is being closed and must not take it.
    const late = direct(bob.userId, "after the theft signal");
    socket.send(late);
    expect((await socket.whenClosed(10_000)).code).toBe(CloseCode.revoked);
    expect(socket.frames.filter((f) => f.type === "accepted")).toEqual([]);
    // Nothing reached bob: his first connection delivers what is queued for him, and a marker
    // sent afterwards by another user arrives first.
    const carol = await account();
    const bobSocket = await TestSocket.open(node.url, bob.accessToken);
    const carolSocket = await TestSocket.open(node.url, carol.accessToken);
    const marker = direct(bob.userId, "marker");
    carolSocket.send(marker);
    expect((await carolSocket.reply(marker.id)).type).toBe("accepted");
    const [received] = await bobSocket.messages(1);
    expect(received.id).toBe(marker.id);
    expect(bobSocket.pendingMessages()).toEqual([]);
    // Neither the old nor the newer tokens open a socket any more.
    await expect(TestSocket.open(node.url, first.body.accessToken)).rejects.toThrow();
    await Promise.all([bobSocket.close(), carolSocket.close()]);
  });

  test("a replay revokes only that device: its socket closes, the account's other socket stays and sends", async () => {
    const alice = await account(2);
    const bob = await account();
    const [one, two] = await Promise.all(alice.sessions.map((s) => TestSocket.open(node.url, s.accessToken)));
    await online(node, alice.userId, 2);
    // The replay of a later token in the chain is the same theft signal.
    const r1 = await client.post("/v1/sessions/refresh", { refreshToken: alice.sessions[1].refreshToken });
    const r2 = await client.post("/v1/sessions/refresh", { refreshToken: r1.body.refreshToken });
    expect(r2.status).toBe(201);
    expect((await client.post("/v1/sessions/refresh", { refreshToken: r1.body.refreshToken })).status).toBe(
      401,
    );
    expect((await two.whenClosed(10_000)).code).toBe(CloseCode.revoked);
    const send = direct(bob.userId, "device 1 is still signed in");
    one.send(send);
    expect((await one.reply(send.id)).type).toBe("accepted");
    expect(one.closed).toBeUndefined();
    await one.close();
  });

  test("a password change closes every socket of the account (4401) and revokes their tokens; the caller's new session works", async () => {
    const alice = await account(3);
    const bob = await account();
    const sockets = await Promise.all(alice.sessions.map((s) => TestSocket.open(node.url, s.accessToken)));
    await online(node, alice.userId, 3);
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "a brand new passphrase" },
      alice.accessToken,
    );
    expect(changed.status).toBe(200);
    expect(changed.body.deviceId).toBe(alice.deviceId);
    // The caller's own socket too: it was opened with a token of its device from before the change.
    for (const socket of sockets) expect((await socket.whenClosed(10_000)).code).toBe(CloseCode.revoked);
    for (const old of alice.sessions) {
      expect((await client.get("/v1/devices", old.accessToken)).status).toBe(401);
      expect((await client.post("/v1/sessions/refresh", { refreshToken: old.refreshToken })).status).toBe(
        401,
      );
    }
    const caller = await TestSocket.open(node.url, changed.body.accessToken);
    const send = direct(bob.userId, "the caller goes on with its new session");
    caller.send(send);
    expect((await caller.reply(send.id)).type).toBe("accepted");
    expect((await client.get("/v1/devices", changed.body.accessToken)).status).toBe(200);
    const login = (password: string) =>
      client.post("/v1/sessions", { username: alice.username, password, deviceId: 2 });
    expect((await login(alice.password)).status).toBe(401);
    expect((await login("a brand new passphrase")).status).toBe(201);
    await caller.close();
  });

  test("logoutDevices: false keeps the other devices; a wrong current password changes nothing", async () => {
    const alice = await account(2);
    const sockets = await Promise.all(alice.sessions.map((s) => TestSocket.open(node.url, s.accessToken)));
    await online(node, alice.userId, 2);
    const wrong = await client.post(
      "/v1/me/password",
      { currentPassword: "not the password", newPassword: "another passphrase" },
      alice.accessToken,
    );
    expect(wrong.status).toBe(401);
    const kept = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "another passphrase", logoutDevices: false },
      alice.sessions[1].accessToken,
    );
    expect(kept.status).toBe(200);
    // The calling device (2) is re-keyed: its socket closes (4401), its old token is refused.
    expect((await sockets[1].whenClosed(10_000)).code).toBe(CloseCode.revoked);
    expect((await client.get("/v1/devices", alice.sessions[1].accessToken)).status).toBe(401);
    expect((await client.get("/v1/devices", kept.body.accessToken)).status).toBe(200);
    // Device 1's socket still answers, and its tokens still work.
    sockets[0].send({ type: "ping" });
    await sockets[0].next((f) => f.type === "pong");
    expect(sockets[0].closed).toBeUndefined();
    expect((await client.get("/v1/devices", alice.accessToken)).status).toBe(200);
    const bad = await client.post(
      "/v1/me/password",
      { currentPassword: "another passphrase", newPassword: "short" },
      alice.accessToken,
    );
    expect(bad.status).toBe(400);
    expect(
      (await client.post("/v1/me/password", { currentPassword: "x".repeat(8), newPassword: "y".repeat(8) }))
        .status,
    ).toBe(401);
    await Promise.all(sockets.map((s) => s.close()));
  });
});
