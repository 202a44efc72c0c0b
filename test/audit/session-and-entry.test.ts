import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { browserSignIn, startWithProvider, traces } from "../oidc/support.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { refusingAuditTrigger } from "./refusing-trigger.ts";

/**
 * Sessions, password changes and the identity provider's provisioning and logouts, and their audit
 * entries: both or neither (as test/audit/change-and-entry.test.ts for groups, devices and keys).
 * They were audited after their transaction had committed, so an audit write that failed (or a
 * node that died in between) left a login, a revocation, a password change or a provisioned account
 * the tamper-evident log never heard of. A trigger on `audit_log` refuses the chosen action: the
 * change must then be refused whole (500, nothing changed); once let through, both are there.
 */
describe.each(BACKENDS)("a session change and its audit entry on %s", (backend) => {
  let node: TestNode;
  let client: Api;
  let trail: Awaited<ReturnType<typeof refusingAuditTrigger>>;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    trail = await refusingAuditTrigger(node, "cbt_auditx2");
  });
  afterAll(() => node?.teardown());

  const devicesOf = (userId: string) =>
    trail.count(sql`select count(*)::int as n from devices where user_id = ${userId}`);
  const refreshTokensOf = (userId: string) =>
    trail.count(sql`select count(*)::int as n from refresh_tokens where user_id = ${userId}`);

  test("session.login: a refused entry issues no tokens and leaves no new device", async () => {
    const alice = await registerAndLogin(client);
    const logins = await trail.entries("session.login");
    const tokens = await refreshTokensOf(alice.userId);
    await trail.refuse("session.login");
    const login = { username: alice.username, password: alice.password };
    expect((await client.post("/v1/sessions", { ...login, registrationId: 77 })).status).toBe(500);
    expect((await client.post("/v1/sessions", { ...login, deviceId: alice.deviceId })).status).toBe(500);
    expect(await devicesOf(alice.userId)).toBe(1);
    expect(await refreshTokensOf(alice.userId)).toBe(tokens);
    expect(await trail.entries("session.login")).toBe(logins);

    await trail.refuse(undefined);
    await loginDevice(client, alice, { registrationId: 77 });
    expect(await devicesOf(alice.userId)).toBe(2);
    expect(await trail.entries("session.login")).toBe(logins + 1);
  });

  test("session.refresh_reused: a refused entry revokes nothing; presented again, the revocation and its entry are both there", async () => {
    const alice = await registerAndLogin(client);
    const refresh = (refreshToken: string) => client.post("/v1/sessions/refresh", { refreshToken });
    const second = await refresh(alice.refreshToken);
    expect(second.status).toBe(201);
    const third = await refresh(second.body.refreshToken);
    expect(third.status).toBe(201);
    // The first token again, its successor spent too: a copy, outside any grace window.
    const reuses = await trail.entries("session.refresh_reused");
    await trail.refuse("session.refresh_reused");
    expect((await refresh(alice.refreshToken)).status).toBe(500);
    expect((await client.get("/v1/devices", third.body.accessToken)).status).toBe(200);
    expect(await refreshTokensOf(alice.userId)).toBeGreaterThan(0);
    expect(await trail.entries("session.refresh_reused")).toBe(reuses);

    await trail.refuse(undefined);
    expect((await refresh(alice.refreshToken)).status).toBe(401);
    expect((await client.get("/v1/devices", third.body.accessToken)).status).toBe(401);
    expect(await trail.entries("session.refresh_reused")).toBe(reuses + 1);
  });

  test("account.password_changed: a refused entry changes no password and revokes nothing", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 78 });
    const changes = await trail.entries("account.password_changed");
    const change = {
      currentPassword: alice.password,
      newPassword: "a passphrase nobody audited",
    };
    await trail.refuse("account.password_changed");
    expect((await client.post("/v1/me/password", change, alice.accessToken)).status).toBe(500);
    expect((await client.get("/v1/devices", alice.accessToken)).status).toBe(200);
    expect((await client.get("/v1/devices", phone.accessToken)).status).toBe(200);
    expect(await trail.entries("account.password_changed")).toBe(changes);
    await loginDevice(client, alice, { deviceId: phone.deviceId }); // the old password still works

    await trail.refuse(undefined);
    const changed = await client.post("/v1/me/password", change, alice.accessToken);
    expect(changed.status).toBe(200);
    expect((await client.get("/v1/devices", phone.accessToken)).status).toBe(401);
    expect(await trail.entries("account.password_changed")).toBe(changes + 1);
  });
});

describe.each(BACKENDS)("the identity provider's changes and their audit entries on %s", (backend) => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;
  let trail: Awaited<ReturnType<typeof refusingAuditTrigger>>;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider(backend));
    client = api(node.url);
    trail = await refusingAuditTrigger(node, "cbt_auditx2_oidc");
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  async function signedIn(sub: string) {
    const browser = await browserSignIn(node, sub);
    expect(browser.code).toBeTruthy();
    const session = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 21,
    });
    expect(session.status).toBe(201);
    return session.body as { userId: string; accessToken: string };
  }

  test("oidc.provision: a refused entry creates no account and no link", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const provisions = await trail.entries("oidc.provision");
    await trail.refuse("oidc.provision");
    const refused = await browserSignIn(node, sub);
    expect(refused.code).toBeNull();
    expect(await traces(node, provider.issuer, sub, sub)).toMatchObject({ links: 0, accounts: 0 });
    expect(await trail.entries("oidc.provision")).toBe(provisions);

    await trail.refuse(undefined);
    await signedIn(sub);
    expect(await traces(node, provider.issuer, sub, sub)).toMatchObject({ links: 1, accounts: 1 });
    expect(await trail.entries("oidc.provision")).toBe(provisions + 1);
  });

  test("oidc.logout (back channel): a refused entry revokes nothing and spends no jti; the provider's retry of the same token does both", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const session = await signedIn(sub);
    const now = Math.floor(Date.now() / 1000);
    const token = await provider.sign(
      {
        iss: provider.issuer,
        aud: provider.clientId,
        iat: now,
        exp: now + 120,
        jti: randomUUID(),
        events: { "http://schemas.openid.net/event/backchannel-logout": {} },
        sub,
      },
      { typ: "logout+jwt" },
    );
    const post = () =>
      fetch(new URL("/v1/oidc/backchannel-logout", node.url), {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ logout_token: token }),
      });
    const logouts = await trail.entries("oidc.logout");
    await trail.refuse("oidc.logout");
    expect((await post()).status).toBe(500);
    expect((await client.get("/v1/devices", session.accessToken)).status).toBe(200);
    expect(await trail.entries("oidc.logout")).toBe(logouts);

    await trail.refuse(undefined);
    expect((await post()).status).toBe(200);
    expect((await client.get("/v1/devices", session.accessToken)).status).toBe(401);
    expect(await trail.entries("oidc.logout")).toBe(logouts + 1);
    expect((await post()).status).toBe(400); // now it is a replay
  });

  test("oidc.logout (admin): a refused entry revokes nothing", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const session = await signedIn(sub);
    const admin = api(node.adminUrl);
    const logout = () =>
      admin.call("POST", "/admin/v1/oidc/logout", { body: { subject: sub }, token: ADMIN_TOKEN });
    const logouts = await trail.entries("oidc.logout");
    await trail.refuse("oidc.logout");
    expect((await logout()).status).toBe(500);
    expect((await client.get("/v1/devices", session.accessToken)).status).toBe(200);
    expect(await trail.entries("oidc.logout")).toBe(logouts);

    await trail.refuse(undefined);
    expect((await logout()).body).toEqual({ userId: session.userId, devices: 1 });
    expect((await client.get("/v1/devices", session.accessToken)).status).toBe(401);
    expect(await trail.entries("oidc.logout")).toBe(logouts + 1);
  });
});
