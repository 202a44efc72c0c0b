import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { eq } from "drizzle-orm";
import { PasswordThrottle } from "../../src/accounts/password-throttle.ts";
import { RegistrationGate, RegistrationTokens } from "../../src/accounts/registration.ts";
import { AccountService } from "../../src/accounts/service.ts";
import { accounts, devices, groupMembers } from "../../src/db/schema.ts";
import { DeviceService } from "../../src/devices/service.ts";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { MemoryRateLimiter } from "../../src/ratelimit/index.ts";
import { SessionService } from "../../src/sessions/service.ts";
import { TokenIssuer } from "../../src/sessions/tokens.ts";
import { type Api, api, registerAndLogin, sessionState } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { TestSocket } from "../support/ws.ts";
import { browserSignIn, deviceSignIn, startWithProvider } from "./support.ts";

/**
 * Between an erasure's `fence` step and its `postgres` step the account's rows still exist: no
 * sign-in may start a session for it then (password, the identity provider's browser or device
 * flow, a refresh), and no access token of it may pass HTTP auth, or a group created meanwhile is
 * left behind, empty, by the sweep. The node's jobs stop after the fence step, as by a crash, so
 * the test stands in that window as long as it likes.
 */
describe.each(BACKENDS)("sign-ins of a user whose erasure has started (%s)", (backend) => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider(backend, {
      afterErasureStep: (step) => {
        if (step === "fence") throw new SimulatedCrash(`stopped after ${step}`);
      },
    }));
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  /** Starts the user's erasure (admin) and waits until its job stopped after the fence step. */
  async function eraseUpToTheSweep(userId: string): Promise<void> {
    const started = await fetch(`${node.adminUrl}/admin/v1/users/${userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(started.status).toBe(202);
    await node.gdpr.erasures.settled(((await started.json()) as { erasureId: string }).erasureId);
    // Still there: the sweep has not run.
    expect(await node.database.db.select().from(accounts).where(eq(accounts.id, userId))).toHaveLength(1);
  }

  test("the identity provider's browser and device flows and a password login are refused with 401", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const first = await browserSignIn(node, sub);
    const session = await client.post("/v1/oidc/sessions", {
      code: first.code,
      codeVerifier: first.verifier,
      registrationId: 31,
    });
    expect(session.status).toBe(201);
    const password = await registerAndLogin(client);
    await eraseUpToTheSweep(session.body.userId);
    await eraseUpToTheSweep(password.userId);

    const browser = await browserSignIn(node, sub);
    const deviceFlow = await deviceSignIn(client, sub);
    const attempts = {
      browser: await client.post("/v1/oidc/sessions", {
        code: browser.code,
        codeVerifier: browser.verifier,
        registrationId: 32,
      }),
      device: await client.post("/v1/oidc/sessions", { code: deviceFlow.code, registrationId: 33 }),
      existingDevice: await client.post("/v1/oidc/sessions", {
        code: (await deviceSignIn(client, sub)).code,
        deviceId: session.body.deviceId,
      }),
      password: await client.post("/v1/sessions", {
        username: password.username,
        password: password.password,
        registrationId: 34,
      }),
    };
    for (const [how, res] of Object.entries(attempts)) {
      expect({ how, status: res.status, code: res.body.error?.code }).toEqual({
        how,
        status: 401,
        code: "unauthorized",
      });
    }
    // No device was made for the refused sign-ins (the first one's is the only one).
    const { db } = node.database;
    expect(await db.select().from(devices).where(eq(devices.userId, session.body.userId))).toHaveLength(1);
    expect(await db.select().from(devices).where(eq(devices.userId, password.userId))).toHaveLength(1);
  });

  test("a session issued by a node that had not heard of the fence is refused on HTTP, at refresh and at the upgrade", async () => {
    // Another node's sessions, on the same database, that had not heard of the fence yet when they
    // signed the user in (its sign-in passed the check just before the fence step).
    const { db } = node.database;
    const { config } = node;
    const limiter = new MemoryRateLimiter();
    const unaware = new SessionService(
      db,
      new AccountService(db, {
        throttle: new PasswordThrottle(limiter, config.loginLimits),
        registration: new RegistrationGate(config.registration, new RegistrationTokens(db), limiter),
        cost: config.passwordHash,
      }),
      new DeviceService(db),
      new TokenIssuer(config.jwtSecret, config.accessTokenTtlSeconds),
      { refreshTtlDays: config.refreshTokenTtlDays },
    );
    const victim = await registerAndLogin(client);
    const bystander = await registerAndLogin(client);
    await eraseUpToTheSweep(victim.userId);
    const late = await unaware.startSession(victim.userId, { registrationId: 41 });

    const group = await client.post(
      "/v1/groups",
      { name: "made while erased", members: [] },
      late.accessToken,
    );
    expect({ status: group.status, code: group.body.error?.code }).toEqual({
      status: 401,
      code: "unauthorized",
    });
    expect(await db.select().from(groupMembers).where(eq(groupMembers.userId, victim.userId))).toEqual([]);
    expect(await sessionState(client, late)).toEqual({ access: 401, refresh: 401 });
    await expect(TestSocket.open(node.url, late.accessToken)).rejects.toThrow("refused");
    // Others are served as before.
    expect((await client.get("/v1/devices", bystander.accessToken)).status).toBe(200);
  });
});
