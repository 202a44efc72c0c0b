import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, registerAndLogin, type SessionBody, sessionState } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * More races of the row-locked issuance (test/sessions/issuance-race.test.ts): refreshes of one
 * token crossing within the grace window, logins racing the account's erasure, refreshes racing a
 * device's removal, and what a login refused by a password change leaves behind. Each answers with
 * a status the protocol names (never 500, never a hang), and nothing issued outlives its revocation.
 */
describe.each(BACKENDS)("revocation races (%s)", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: { REFRESH_GRACE_SECONDS: "30", LOGINS_PER_ACCOUNT: "1000000" },
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
    const other = await client.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      registrationId: 4000,
    });
    expect(other.status).toBe(201);
    const statuses: number[] = [];
    let last: { accessToken: string; refreshToken: string } = other.body;
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
    const removal = await client.delete(`/v1/devices/${other.body.deviceId}`, alice.accessToken);
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
    let changing: Promise<{ status: number }> | undefined;
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
    expect((await changing)?.status).toBe(204);
    const results = await Promise.all(logins);
    const issued = results.filter((r) => r.status === 201).length;
    const listed = await client.get("/v1/devices", alice.accessToken);
    expect(listed.status).toBe(200);
    // The device that changed the password, and one per login that got a session: no device
    // without a session (it would hold one of the account's 127 slots until removed by hand).
    expect(listed.body.devices.length).toBe(1 + issued);
  }, 60_000);

  // Known fault, not fixed yet (the test fails today; run it with `bun test --todo`): a login may name an existing device id, and a password change keeps the calling device's session, so a session someone else opened on that device id keeps working; the server cannot tell the caller's refresh token from theirs (a fix changes the protocol: revoke the device and hand the caller new tokens).
  test.todo("a session logged in to the caller's own device id does not outlive the caller's password change", async () => {
    const alice = await registerAndLogin(client);
    // Someone who has the password logs in naming alice's device (a login may reuse a device id).
    const intruder = await client.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      deviceId: alice.deviceId,
    });
    expect(intruder.status).toBe(201);
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "alice took her account back" },
      alice.accessToken,
    );
    expect(changed.status).toBe(204);
    expect(await sessionState(client, intruder.body)).toEqual({ access: 401, refresh: 401 });
  }, 60_000);
});
