import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, loginDevice, registerAndLogin, sessionState } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * Password changes racing each other and the removal of the calling device. Each request is
 * authenticated, then checks the current password (slow: a hash), then changes things: two changes
 * that both checked the old password must not both go through (each revoking the other's device
 * before the other re-keys its own would leave both devices signed in, the password set by only
 * one), and a change whose device is gone by the time it writes must change nothing.
 */
describe.each(BACKENDS)("password changes racing (%s)", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // Each round logs in with wrong passwords on purpose: the failure budgets (10 per address by
    // default) would answer 429 where the test waits for 401.
    node = await startTestNode(backend, {
      env: {
        LOGINS_PER_ACCOUNT: "1000000",
        LOGIN_ATTEMPTS_PER_ADDRESS: "1000000",
        LOGIN_FAILURES_PER_ADDRESS: "1000",
        LOGIN_FAILURES_PER_ACCOUNT: "1000000",
      },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const login = (username: string, password: string) =>
    client.post("/v1/sessions", { username, password, registrationId: 7 }).then((r) => r.status);

  test("two devices changing the password from the same current one: one wins, the other is refused and signed out", async () => {
    for (let round = 0; round < 3; round++) {
      const alice = await registerAndLogin(client);
      const phone = await loginDevice(client, alice);
      const [fromLaptop, fromPhone] = await Promise.all([
        client.post(
          "/v1/me/password",
          { currentPassword: alice.password, newPassword: "the laptop's new passphrase" },
          alice.accessToken,
        ),
        client.post(
          "/v1/me/password",
          { currentPassword: alice.password, newPassword: "the phone's new passphrase" },
          phone.accessToken,
        ),
      ]);
      expect([fromLaptop.status, fromPhone.status].sort()).toEqual([200, 401]);
      const [winner, loser] = fromLaptop.status === 200 ? [fromLaptop, phone] : [fromPhone, alice];
      const winnerPassword =
        fromLaptop.status === 200 ? "the laptop's new passphrase" : "the phone's new passphrase";
      const loserPassword =
        fromLaptop.status === 200 ? "the phone's new passphrase" : "the laptop's new passphrase";
      // The winner's session works; the loser's device was revoked by the winner's change.
      expect(await sessionState(client, winner.body)).toEqual({ access: 200, refresh: 201 });
      expect(await sessionState(client, loser)).toEqual({ access: 401, refresh: 401 });
      // The password is the winner's.
      expect(await login(alice.username, winnerPassword)).toBe(201);
      expect(await login(alice.username, loserPassword)).toBe(401);
      expect(await login(alice.username, alice.password)).toBe(401);
    }
  }, 60_000);

  test("a password change whose device is removed meanwhile either answers 200 or changes nothing", async () => {
    for (let round = 0; round < 3; round++) {
      const alice = await registerAndLogin(client);
      const phone = await loginDevice(client, alice);
      const changing = client.post(
        "/v1/me/password",
        { currentPassword: alice.password, newPassword: "a passphrase nobody saw set" },
        alice.accessToken,
      );
      // The phone removes the laptop while the laptop's change checks the current password.
      const removed = await client.delete(`/v1/devices/${alice.deviceId}`, phone.accessToken);
      const changed = await changing;
      if (removed.status === 401) {
        // The change committed before the removal was authenticated: it revoked the phone, whose
        // removal was then refused. The laptop keeps its new session, the phone has none.
        expect(changed.status).toBe(200);
        expect(await sessionState(client, changed.body)).toEqual({ access: 200, refresh: 201 });
        expect(await sessionState(client, phone)).toEqual({ access: 401, refresh: 401 });
        expect(await login(alice.username, "a passphrase nobody saw set")).toBe(201);
        continue;
      }
      expect(removed.status).toBe(204);
      if (changed.status === 200) {
        // The change went first; the removal then took the device and its new session.
        expect(await sessionState(client, changed.body)).toEqual({ access: 401, refresh: 401 });
        expect(await login(alice.username, "a passphrase nobody saw set")).toBe(201);
        continue;
      }
      // Refused (the device was gone): the password and the phone's session are as they were.
      expect([401, 404]).toContain(changed.status);
      expect(await login(alice.username, alice.password)).toBe(201);
      expect(await login(alice.username, "a passphrase nobody saw set")).toBe(401);
      expect(await sessionState(client, phone)).toEqual({ access: 200, refresh: 201 });
    }
  }, 60_000);
});
