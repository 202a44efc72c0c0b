import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, registerAndLogin, type SessionBody, sessionState } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * Sessions issued while a revocation runs must not outlive it: a login whose password was checked
 * before a password change, and a refresh spent while its device is revoked, race the revocation's
 * steps (list the devices, bump each one's token generation, delete its refresh tokens). Whatever
 * such a race hands out must be dead once the revocation has answered.
 */
describe.each(BACKENDS)("sessions issued during a revocation do not outlive it (%s)", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend, {
      // Each password check is counted as a failure until it matches (PasswordThrottle.admit), so
      // logins still being hashed count against the account's failures from this address: when
      // hashing is slow (a loaded machine) ten of them in flight had the password change refused
      // 429. The failure budgets are lifted with the success budget.
      env: {
        REFRESH_GRACE_SECONDS: "0",
        LOGINS_PER_ACCOUNT: "1000000",
        LOGIN_FAILURES_PER_ADDRESS: "1000",
        LOGIN_FAILURES_PER_ACCOUNT: "3000",
      },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("logins with the old password racing a password change: none yields a working session", async () => {
    const alice = await registerAndLogin(client);
    const logins: Promise<{ status: number; body: SessionBody }>[] = [];
    // Logins keep starting before, during and after the change; each checks the old password.
    let changing: Promise<{ status: number; body: SessionBody }> | undefined;
    for (let i = 0; i < 40; i++) {
      logins.push(
        client.post("/v1/sessions", {
          username: alice.username,
          password: alice.password,
          registrationId: 1000 + i,
        }),
      );
      if (i === 10)
        changing = client.post(
          "/v1/me/password",
          { currentPassword: alice.password, newPassword: "a brand new passphrase" },
          alice.accessToken,
        );
      await Bun.sleep(i % 3);
    }
    const changed = await changing;
    expect(changed?.status).toBe(200);
    const results = await Promise.all(logins);
    const issued = results.filter((r) => r.status === 201).map((r) => r.body);
    // Refused: the old password once the change landed.
    for (const r of results) expect([201, 401]).toContain(r.status);
    const survivors: number[] = [];
    for (const session of issued) {
      const state = await sessionState(client, session);
      if (state.access === 200 || state.refresh === 201) survivors.push(session.deviceId);
    }
    expect(survivors).toEqual([]);
    // The device that changed the password was re-keyed: its old token is refused, the new one works.
    expect((await client.get("/v1/devices", alice.accessToken)).status).toBe(401);
    expect((await client.get("/v1/devices", changed?.body.accessToken)).status).toBe(200);
  }, 60_000);

  // PostgreSQL only: PGlite runs one transaction at a time, so a refresh cannot interleave there
  // (and 20 refresh loops starve its one connection for most of a minute).
  test.if(backend === "postgres")(
    "refreshes racing the revocation of their devices: no successor token outlives it",
    async () => {
      const alice = await registerAndLogin(client);
      const others: SessionBody[] = [];
      for (let i = 0; i < 20; i++) {
        const more = await client.post("/v1/sessions", {
          username: alice.username,
          password: alice.password,
          registrationId: 2000 + i,
        });
        expect(more.status).toBe(201);
        others.push(more.body);
      }
      // Every other device refreshes in a loop, each successor spent at once, until it is refused,
      // while the devices are revoked one after another (the node's own calls: no HTTP between steps).
      const last = new Map<number, { accessToken: string; refreshToken: string }>();
      let revoked = false;
      const chains = others.map(async (session) => {
        let current = session.refreshToken;
        // A chain that survived its device's revocation would run for ever: it stops once all are revoked.
        while (!revoked) {
          try {
            const next = await node.sessions.refresh(current);
            current = next.refreshToken;
            last.set(next.deviceId, next);
          } catch {
            return;
          }
        }
      });
      await Bun.sleep(20);
      for (const session of others) {
        await node.sessions.revokeDevice(alice.userId, session.deviceId);
        await Bun.sleep(1);
      }
      revoked = true;
      await Promise.all(chains);
      const survivors: number[] = [];
      for (const [deviceId, session] of last) {
        const state = await sessionState(client, session);
        if (state.access === 200 || state.refresh === 201) survivors.push(deviceId);
      }
      expect(survivors).toEqual([]);
    },
    60_000,
  );
});
