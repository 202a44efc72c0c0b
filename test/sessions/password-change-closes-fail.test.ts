import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { PasswordThrottle } from "../../src/accounts/password-throttle.ts";
import { RegistrationGate, RegistrationTokens } from "../../src/accounts/registration.ts";
import { AccountService } from "../../src/accounts/service.ts";
import { DeviceService } from "../../src/devices/service.ts";
import { MemoryRateLimiter } from "../../src/ratelimit/index.ts";
import { SessionService } from "../../src/sessions/service.ts";
import { TokenIssuer } from "../../src/sessions/tokens.ts";
import { type Api, api, loginDevice, registerAndLogin, sessionState } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * The revocation port (`CloseDeviceSockets`, the node link) can fail after the password change has
 * committed: Redis away when the close reads the socket leases, a broker outage. The other devices'
 * tokens must be revoked with the password all the same, in its transaction, and the caller must
 * get its new session; the closes are still tried for every revoked device. The sessions here run
 * on the node's own database (PGlite or PostgreSQL) with a node link that always fails; the node's
 * HTTP API tells which sessions still work.
 */
describe.each(BACKENDS)("a password change whose socket closes fail (%s)", (backend) => {
  let node: TestNode;
  let client: Api;
  let sessions: SessionService;
  const closes: number[] = [];

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    const { db } = node.database;
    const { config } = node;
    const limiter = new MemoryRateLimiter();
    const accounts = new AccountService(db, {
      throttle: new PasswordThrottle(limiter, config.loginLimits),
      registration: new RegistrationGate(config.registration, new RegistrationTokens(db), limiter),
      cost: config.passwordHash,
    });
    sessions = new SessionService(
      db,
      accounts,
      new DeviceService(db),
      new TokenIssuer(config.jwtSecret, config.accessTokenTtlSeconds),
      {
        refreshTtlDays: config.refreshTokenTtlDays,
        closeSockets: async (_userId, deviceId) => {
          closes.push(deviceId);
          throw new Error("the node link could not read the socket leases");
        },
      },
    );
  });
  afterAll(() => node?.teardown());

  test("still revokes every other device, answers the caller's new session and tries every close", async () => {
    closes.length = 0;
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 501 });
    const tablet = await loginDevice(client, alice, { registrationId: 502 });
    const { principal, generation } = await sessions.authenticateSession(alice.accessToken);
    const { tokens, revoked } = await sessions.changePassword(
      principal,
      generation,
      { currentPassword: alice.password, newPassword: "a passphrase set while closes fail" },
      "127.0.0.1",
    );
    expect(revoked).toEqual([phone.deviceId, tablet.deviceId].sort((x, y) => x - y));
    expect(await sessionState(client, phone)).toEqual({ access: 401, refresh: 401 });
    expect(await sessionState(client, tablet)).toEqual({ access: 401, refresh: 401 });
    expect(await sessionState(client, alice)).toEqual({ access: 401, refresh: 401 });
    expect(await sessionState(client, tokens)).toEqual({ access: 200, refresh: 201 });
    expect([...closes].sort((x, y) => x - y)).toEqual(
      [alice.deviceId, phone.deviceId, tablet.deviceId].sort((x, y) => x - y),
    );
    const login = await client.post("/v1/sessions", {
      username: alice.username,
      password: "a passphrase set while closes fail",
      deviceId: phone.deviceId,
    });
    expect(login.status).toBe(201);
  });
});
