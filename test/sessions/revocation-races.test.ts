import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CloseCode } from "../../src/protocol/index.ts";
import {
  type Api,
  api,
  loginDevice,
  registerAndLogin,
  type SessionBody,
  sessionState,
} from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * More races of the row-locked issuance (test/sessions/issuance-race.test.ts): refreshes of one
 * token crossing within the grace window, logins racing the account's erasure, refreshes racing a
 * device's removal, what a login refused by a password change leaves behind, and sessions on the
 * caller's own device id at a password change. Each answers with a status the protocol names (never
 * 500, never a hang), and nothing issued outlives its revocation.
 */
describe.each(BACKENDS)("revocation races (%s)", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend, {
      // Logins still being hashed count as failures (PasswordThrottle.admit): with nine in flight
      // the racing erasure or password change was one check from a 429 on a loaded machine.
      env: {
        REFRESH_GRACE_SECONDS: "30",
        LOGINS_PER_ACCOUNT: "1000000",
        LOGIN_FAILURES_PER_ADDRESS: "1000",
        LOGIN_FAILURES_PER_ACCOUNT: "3000",
      },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("20 concurrent refreshes of one token within the grace window all get the same successor", async () => {
    const alice = await registerAndLogin(client);
    const replies = await Promise.all(
      Array.from({ length: 20 }, () =>
        client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken }),
      ),
    );
    expect(replies.map((r) => r.status)).toEqual(replies.map(() => 201));
    expect(new Set(replies.map((r) => r.body.refreshToken)).size).toBe(1);
  }, 60_000);

  test("logins racing the account's erasure: none answers 500 and none yields a working session", async () => {
    const alice = await registerAndLogin(client);
    const logins: Promise<{ status: number; body: SessionBody }>[] = [];
    let erasing: Promise<{ status: number; body: { erasureId: string } }> | undefined;
    for (let i = 0; i < 30; i++) {
      logins.push(
        client.post("/v1/sessions", {
          username: alice.username,
          password: alice.password,
          registrationId: 3000 + i,
        }),
      );
      if (i === 8)
        erasing = client.call("DELETE", "/v1/me", {
          token: alice.accessToken,
          body: { password: alice.password },
        });
      await Bun.sleep(i % 3);
    }
    const erased = await erasing;
    expect(erased?.status).toBe(202);
    await node.gdpr.erasures.settled(erased?.body.erasureId ?? "");
    const results = await Promise.all(logins);
    expect(results.map((r) => r.status).filter((s) => ![201, 401, 429].includes(s))).toEqual([]);
    const survivors: number[] = [];
    for (const r of results.filter((r) => r.status === 201)) {
      const state = await sessionState(client, r.body);
      if (state.access === 200 || state.refresh === 201) survivors.push(r.body.deviceId);
    }
    expect(survivors).toEqual([]);
  }, 60_000);

  test("refreshes racing the removal of their device: no 500, no successor outlives the removal", async () => {
    const alice = await registerAndLogin(client);
    const other = await loginDevice(client, alice, { registrationId: 4000 });
    const statuses: number[] = [];
    let last: { accessToken: string; refreshToken: string } = other;
    let removed = false;
    const chain = (async () => {
      while (!removed) {
        const r = await client.post("/v1/sessions/refresh", { refreshToken: last.refreshToken });
        statuses.push(r.status);
        if (r.status !== 201) return;
        last = r.body;
      }
    })();
    await Bun.sleep(30);
    const removal = await client.delete(`/v1/devices/${other.deviceId}`, alice.accessToken);
    expect(removal.status).toBe(204);
    removed = true;
    await chain;
    expect(statuses.filter((s) => s !== 201 && s !== 401)).toEqual([]);
    const state = await sessionState(client, last);
    expect(state).toEqual({ access: 401, refresh: 401 });
  }, 60_000);

  test("a login refused because the password changed under it leaves no device behind", async () => {
    const alice = await registerAndLogin(client);
    const logins: Promise<{ status: number }>[] = [];
    let changing: Promise<{ status: number; body: SessionBody }> | undefined;
    for (let i = 0; i < 30; i++) {
      logins.push(
        client.post("/v1/sessions", {
          username: alice.username,
          password: alice.password,
          registrationId: 5000 + i,
        }),
      );
      if (i === 5)
        changing = client.post(
          "/v1/me/password",
          {
            currentPassword: alice.password,
            newPassword: "another brand new passphrase",
            logoutDevices: false,
          },
          alice.accessToken,
        );
      await Bun.sleep(i % 3);
    }
    const changed = await changing;
    expect(changed?.status).toBe(200);
    const results = await Promise.all(logins);
    const issued = results.filter((r) => r.status === 201).length;
    // The caller's device was re-keyed: its new access token, not the one it called with.
    const listed = await client.get("/v1/devices", changed?.body.accessToken);
    expect(listed.status).toBe(200);
    // The device that changed the password, and one per login that got a session: no device
    // without a session (it would hold one of the account's 127 slots until removed by hand).
    expect(listed.body.devices.length).toBe(1 + issued);
  }, 60_000);

  // A login may name an existing device id, so a session someone else opened on the caller's device
  // id cannot be told from the caller's: the password change re-keys the calling device (its tokens
  // refused, its sockets closed 4401) and answers with the caller's new session.
  test("a session logged in to the caller's own device id does not outlive the caller's password change", async () => {
    const alice = await registerAndLogin(client);
    // Someone who has the password logs in naming alice's device (a login may reuse a device id).
    const intruder = await loginDevice(client, alice, { deviceId: alice.deviceId });
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "alice took her account back" },
      alice.accessToken,
    );
    expect(changed.status).toBe(200);
    expect(await sessionState(client, intruder)).toEqual({ access: 401, refresh: 401 });
    // Alice's own tokens from before are refused too; the session the change answered with works.
    expect(await sessionState(client, alice)).toEqual({ access: 401, refresh: 401 });
    expect(Object.keys(changed.body).sort()).toEqual(
      ["accessToken", "deviceId", "expiresIn", "refreshToken", "userId"].sort(),
    );
    expect(changed.body.userId).toBe(alice.userId);
    expect(changed.body.deviceId).toBe(alice.deviceId);
    expect(await sessionState(client, changed.body)).toEqual({ access: 200, refresh: 201 });
  }, 60_000);

  test("logoutDevices: false still re-keys the caller's device: a successor held by someone else is refused, a socket on the old token closes (4401), the new token opens one that stays", async () => {
    const alice = await registerAndLogin(client);
    const other = await loginDevice(client, alice, { registrationId: 6000 });
    // Someone logs in on alice's device id and rotates once: they hold a refresh token of that
    // device issued after alice's own.
    const intruder = await loginDevice(client, alice, { deviceId: alice.deviceId });
    const rotated = await client.post("/v1/sessions/refresh", { refreshToken: intruder.refreshToken });
    expect(rotated.status).toBe(201);
    const socket = await TestSocket.open(node.url, rotated.body.accessToken);
    socket.send({ type: "ping" });
    await socket.next((f) => f.type === "pong");
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "alice took her account back", logoutDevices: false },
      alice.accessToken,
    );
    expect(changed.status).toBe(200);
    expect((await socket.whenClosed(10_000)).code).toBe(CloseCode.revoked);
    expect(await sessionState(client, rotated.body)).toEqual({ access: 401, refresh: 401 });
    await expect(TestSocket.open(node.url, rotated.body.accessToken)).rejects.toThrow();
    // The caller's new session opens a socket that answers, and the other device kept its session.
    const fresh = await TestSocket.open(node.url, changed.body.accessToken);
    fresh.send({ type: "ping" });
    await fresh.next((f) => f.type === "pong");
    expect(fresh.closed).toBeUndefined();
    expect((await client.get("/v1/devices", other.accessToken)).status).toBe(200);
    await fresh.close();
  }, 60_000);

  test("refreshes on the caller's device id racing the password change: no successor outlives it, the caller's new session works", async () => {
    const alice = await registerAndLogin(client);
    const intruder = await loginDevice(client, alice, { deviceId: alice.deviceId });
    // The intruder rotates in a loop, each successor spent at once, until refused, while alice
    // changes the password.
    let last: { accessToken: string; refreshToken: string } = intruder;
    let changedAt = 0;
    const statuses: number[] = [];
    const chain = (async () => {
      while (changedAt === 0) {
        const r = await client.post("/v1/sessions/refresh", { refreshToken: last.refreshToken });
        statuses.push(r.status);
        if (r.status !== 201) return;
        last = r.body;
      }
    })();
    await Bun.sleep(30);
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "alice took her account back" },
      alice.accessToken,
    );
    changedAt = Date.now();
    expect(changed.status).toBe(200);
    await chain;
    expect(statuses.filter((s) => s !== 201 && s !== 401)).toEqual([]);
    expect(await sessionState(client, last)).toEqual({ access: 401, refresh: 401 });
    expect(await sessionState(client, changed.body)).toEqual({ access: 200, refresh: 201 });
  }, 60_000);
});
