import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { eq } from "drizzle-orm";
import { oidcIdentities, oidcLogoutTokens, oidcSignInCodes } from "../../src/db/schema.ts";
import { type SignedReceipt, verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { type Api, api, registerAndLogin, uniqueUsername } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { TestSocket } from "../support/ws.ts";
import { browserSignIn, deviceSignIn, startWithProvider } from "./support.ts";

/** Secrets and claim values a test saw; no log line may hold any of them. */
const seen = new Set<string>();

async function until<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(100);
  }
}

describe.each(BACKENDS)("the identity provider link as personal data on %s", (backend) => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider(backend));
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  async function signIn(sub: string) {
    const browser = await browserSignIn(node, sub);
    const session = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 21,
    });
    expect(session.status).toBe(201);
    for (const value of [browser.code, browser.verifier, browser.state, session.body.refreshToken, sub]) {
      if (value) seen.add(value);
    }
    return session.body;
  }

  test("the export holds the (iss, sub) link; the record of processing names the provider as a source", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const session = await signIn(sub);
    const archive = await client.get("/v1/me/export", session.accessToken);
    expect(archive.status).toBe(200);
    expect(archive.body.identityProviderLinks).toEqual([
      {
        issuer: provider.issuer,
        subject: sub,
        linkedAt: expect.any(String),
        lastSignInAt: expect.any(String),
      },
    ]);
    expect(archive.body.processing.source).toContain(provider.issuer);
    const ropa = await api(node.adminUrl).get("/admin/v1/ropa", ADMIN_TOKEN);
    const category = ropa.body.categories.find(
      (c: { category: string }) => c.category === "identity provider links",
    );
    expect(category.source).toContain(provider.issuer);
    expect(category.data.join(" ")).toContain("(iss, sub)");
  });

  test("erasure removes the link (a fresh sign-in code stands in for the password it has not got) and the receipt counts it", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const session = await signIn(sub);
    const socket = await TestSocket.open(node.url, session.accessToken);
    // Without a password, the password route is refused clearly.
    const withPassword = await client.delete("/v1/me", session.accessToken, { password: "whatever it is" });
    expect(withPassword.status).toBe(403);
    // Re-authentication: a new sign-in at the provider, its code spent on the erasure instead of a session.
    const fresh = await browserSignIn(node, sub, { prompt: "login" });
    const someoneElses = await browserSignIn(node, `sub_${randomUUID().slice(0, 8)}`);
    const refused = await client.delete("/v1/me", session.accessToken, {
      signInCode: someoneElses.code,
      codeVerifier: someoneElses.verifier,
    });
    expect(refused.status).toBe(401);
    const erased = await client.delete("/v1/me", session.accessToken, {
      signInCode: fresh.code,
      codeVerifier: fresh.verifier,
    });
    expect(erased.status).toBe(202);
    expect((await socket.whenClosed(15_000)).code).toBe(4410);
    const receipt = await until(async () => {
      const status = await client.get(`/v1/erasures/${erased.body.erasureId}`);
      return status.body.status === "done" ? (status.body.receipt as SignedReceipt) : undefined;
    });
    expect(verifyReceipt(receipt)).toBe(true);
    expect(receipt.payload.stores.postgres.what).toContain("identity provider links (1)");
    const { db } = node.database;
    expect(await db.select().from(oidcIdentities).where(eq(oidcIdentities.subject, sub))).toEqual([]);
    expect(await db.select().from(oidcSignInCodes).where(eq(oidcSignInCodes.userId, session.userId))).toEqual(
      [],
    );
    // The subject signing in again is a new person to ClearBox: a new account, not the erased one.
    const again = await signIn(sub);
    expect(again.userId).not.toBe(session.userId);
  });

  test("the retention job removes expired sign-in codes and logout-token ids, and keeps live ones", async () => {
    const session = await signIn(`sub_${randomUUID().slice(0, 8)}`);
    const { db } = node.database;
    const now = Date.now();
    await db.insert(oidcSignInCodes).values([
      { codeHash: `expired-${randomUUID()}`, userId: session.userId, expiresAt: new Date(now - 1000) },
      { codeHash: `live-${randomUUID()}`, userId: session.userId, expiresAt: new Date(now + 60_000) },
    ]);
    await db.insert(oidcLogoutTokens).values([
      { issuer: provider.issuer, jti: `expired-${randomUUID()}`, expiresAt: new Date(now - 1000) },
      { issuer: provider.issuer, jti: `live-${randomUUID()}`, expiresAt: new Date(now + 60_000) },
    ]);
    const report = await node.retention.runOnce();
    expect(report).toMatchObject({ oidcSignInCodes: 1, oidcLogoutTokens: 1 });
    const codes = await db.select().from(oidcSignInCodes).where(eq(oidcSignInCodes.userId, session.userId));
    expect(codes.map((c) => c.codeHash.split("-")[0])).toEqual(["live"]);
  });

  test("no log line holds a sign-in code, verifier, state, token, user code or claim value", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    await signIn(sub);
    const device = await deviceSignIn(client, sub);
    for (const value of [device.code, device.userCode, device.deviceCode]) if (value) seen.add(value);
    // A refused sign-in logs its reason, still without values.
    provider.tamperTokens = async (body) => {
      seen.add(body.id_token as string);
      seen.add(String(body.access_token));
      return { ...body, id_token: await provider.resign(body.id_token as string, { aud: "x" }) };
    };
    expect((await browserSignIn(node, sub)).response.status).toBe(401);
    provider.tamperTokens = undefined;
    const logs = node.logs.join("");
    expect(logs).toContain("oidc step failed");
    expect(seen.size).toBeGreaterThan(10);
    for (const value of seen)
      expect({ value, inLogs: logs.includes(value) }).toEqual({ value, inLogs: false });
  });
});

describe("REGISTRATION=oidc-only", () => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider("pglite", { env: { REGISTRATION: "oidc-only" } }));
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
  });

  test("passwords are refused everywhere with a clear error: register, login, the check before erasure", async () => {
    const username = uniqueUsername("pw");
    const register = await client.post("/v1/accounts", { username, password: "correct horse battery" });
    expect(register.status).toBe(403);
    expect(register.body.error.message).toContain("passwords are disabled");
    const login = await client.post("/v1/sessions", {
      username,
      password: "correct horse battery",
      registrationId: 1,
    });
    expect(login.status).toBe(403);
    expect(login.body.error.message).toContain("/v1/oidc/authorize");
    await expect(registerAndLogin(client)).rejects.toThrow(/403/);

    const browser = await browserSignIn(node, `sub_${randomUUID().slice(0, 8)}`);
    const session = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 2,
    });
    expect(session.status).toBe(201);
    const erase = await client.delete("/v1/me", session.body.accessToken, {
      password: "correct horse battery",
    });
    expect(erase.status).toBe(403);
    expect(erase.body.error.message).toContain("passwords are disabled");
    const ropa = await api(node.adminUrl).get("/admin/v1/ropa", ADMIN_TOKEN);
    expect(ropa.body.dataSubjects[0]).toContain("password registration disabled");
  });
});
