import { afterAll, afterEach, beforeAll, describe, expect, setSystemTime, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { and, eq } from "drizzle-orm";
import { decodeJwt } from "jose";
import { accounts, oidcIdentities } from "../../src/db/schema.ts";
import { type Api, api, uniqueUsername } from "../support/http.ts";
import { BACKENDS, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import {
  browserSignIn,
  browserToCallback,
  deviceSignIn,
  pkce,
  startWithProvider,
  traces,
} from "./support.ts";

/** A subject (the login typed at the provider) no other test uses; the username claim is the same by default. */
const newSubject = () => `sub_${randomUUID().slice(0, 8)}`;

describe.each(BACKENDS)("sign-in with the identity provider on %s", (backend) => {
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
  afterEach(() => {
    provider.tamperTokens = undefined;
  });

  test("browser flow: the first sign-in provisions an account named by the claim, linked by (iss, sub), and ends in a session", async () => {
    const sub = newSubject();
    const username = uniqueUsername("oidc");
    provider.accounts.set(sub, { preferred_username: username });
    const signIn = await browserSignIn(node, sub);
    expect(signIn.response.status).toBe(303);
    expect(signIn.location?.startsWith("https://app.example/signed-in?code=")).toBe(true);
    // Neither the provider's code nor any token travels to the client's URL: only our sign-in code.
    expect(new URL(signIn.location as string).searchParams.size).toBe(1);
    expect(signIn.response.headers.get("referrer-policy")).toBe("no-referrer");

    const session = await client.post("/v1/oidc/sessions", {
      code: signIn.code,
      codeVerifier: signIn.verifier,
      registrationId: 77,
      deviceName: "browser",
    });
    expect(session.status).toBe(201);
    expect(session.body).toMatchObject({ deviceId: 1, expiresIn: 900 });
    const devices = await client.get("/v1/devices", session.body.accessToken);
    expect(devices.status).toBe(200);
    expect(devices.body.devices).toMatchObject([{ deviceId: 1, name: "browser" }]);

    const [link] = await node.database.db
      .select()
      .from(oidcIdentities)
      .where(eq(oidcIdentities.subject, sub));
    expect(link).toMatchObject({ issuer: provider.issuer, subject: sub, userId: session.body.userId });
    const [account] = await node.database.db
      .select()
      .from(accounts)
      .where(eq(accounts.id, session.body.userId));
    expect(account.username).toBe(username);
    expect(account.passwordHash).toBeNull();
    // No password matches an account without one (the decoy hash is checked and refused).
    expect(
      (await client.post("/v1/sessions", { username, password: "anything at all", registrationId: 1 }))
        .status,
    ).toBe(401);

    const actions = (await node.audit.entriesAbout(session.body.userId)).map((e) => [e.action, e.details]);
    expect(actions).toEqual([
      ["oidc.provision", {}],
      ["session.login", { deviceId: 1, newDevice: true, method: "oidc" }],
    ]);
  });

  test("a later sign-in of the same subject finds the same account, even after the provider renamed it, and can reuse a device", async () => {
    const sub = newSubject();
    const first = await browserSignIn(node, sub);
    const one = await client.post("/v1/oidc/sessions", {
      code: first.code,
      codeVerifier: first.verifier,
      registrationId: 5,
    });
    expect(one.status).toBe(201);
    provider.accounts.set(sub, { preferred_username: uniqueUsername("renamed") });
    const again = await browserSignIn(node, sub);
    const two = await client.post("/v1/oidc/sessions", {
      code: again.code,
      codeVerifier: again.verifier,
      deviceId: 1,
    });
    expect(two.status).toBe(201);
    expect(two.body).toMatchObject({ userId: one.body.userId, deviceId: 1 });
    const [account] = await node.database.db.select().from(accounts).where(eq(accounts.id, one.body.userId));
    expect(account.username).toBe(sub);
  });

  test("a sign-in code is single use, expires with its verifier check, and needs the verifier of the flow that began it", async () => {
    const signIn = await browserSignIn(node, newSubject());
    const wrong = pkce().verifier;
    const refused = await client.post("/v1/oidc/sessions", {
      code: signIn.code,
      codeVerifier: wrong,
      registrationId: 5,
    });
    expect(refused.status).toBe(401);
    expect(refused.body.error.code).toBe("unauthorized");
    // The failed attempt spent it: the right verifier comes too late.
    const late = await client.post("/v1/oidc/sessions", {
      code: signIn.code,
      codeVerifier: signIn.verifier,
      registrationId: 5,
    });
    expect(late.status).toBe(401);

    const other = await browserSignIn(node, newSubject());
    expect((await client.post("/v1/oidc/sessions", { code: other.code, registrationId: 5 })).status).toBe(
      401,
    );
    const unknown = await client.post("/v1/oidc/sessions", {
      code: "not-a-code",
      codeVerifier: wrong,
      registrationId: 5,
    });
    expect(unknown.status).toBe(401);
  });

  test("the browser flow refuses return URIs that are neither registered nor loopback, and plain challenges", async () => {
    const { challenge } = pkce();
    const start = (redirect: string, extra = "") =>
      client.get(
        `/v1/oidc/authorize?redirect_uri=${encodeURIComponent(redirect)}&code_challenge=${challenge}${extra}`,
      );
    for (const bad of [
      "https://evil.example/steal",
      "https://app.example/signed-in/x",
      "http://localhost:9/cb",
      "nope",
    ]) {
      const res = await start(bad);
      expect(res.status).toBe(400);
      expect(res.body.error.message).toContain("redirect_uri");
    }
    expect((await start("https://app.example/signed-in", "&code_challenge_method=plain")).status).toBe(400);
    expect(
      (await client.get(`/v1/oidc/authorize?redirect_uri=http://127.0.0.1:9/cb&code_challenge=short`)).status,
    ).toBe(400);
    // A native app's loopback listener on any port is allowed (RFC 8252 §7.3).
    const loopback = await fetch(
      new URL(
        `/v1/oidc/authorize?redirect_uri=http://127.0.0.1:53124/callback&code_challenge=${challenge}`,
        node.url,
      ),
      { redirect: "manual" },
    );
    expect(loopback.status).toBe(303);
    expect(new URL(loopback.headers.get("location") as string).origin).toBe(provider.issuer);
    expect(loopback.headers.get("set-cookie")).toMatch(
      /^clearbox_oidc=.+; Path=\/v1\/oidc\/callback; Max-Age=600; HttpOnly; SameSite=Lax$/,
    );
  });

  test("native flow: the device authorization grant ends in the same account and ClearBox tokens, no browser on the device", async () => {
    const sub = newSubject();
    const browser = await browserSignIn(node, sub);
    const viaBrowser = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 9,
    });
    const device = await deviceSignIn(client, sub);
    expect(device.page.page).toContain("Sign-in Success");
    expect(device.code).toBeString();
    const session = await client.post("/v1/oidc/sessions", {
      code: device.code,
      registrationId: 10,
      deviceName: "cli",
    });
    expect(session.status).toBe(201);
    expect(session.body).toMatchObject({ userId: viaBrowser.body.userId, deviceId: 2 });
    expect((await client.get("/v1/devices", session.body.accessToken)).body.devices).toHaveLength(2);
  });

  test("native flow: polling before the user acted is pending; an unknown device code is refused", async () => {
    const started = await client.post("/v1/oidc/device", {});
    expect(started.status).toBe(200);
    expect(started.body.verificationUri).toStartWith(provider.issuer);
    const pending = await client.post("/v1/oidc/device/poll", { deviceCode: started.body.deviceCode });
    expect(pending.status).toBe(200);
    expect(["pending", "slow_down"]).toContain(pending.body.status);
    const unknown = await client.post("/v1/oidc/device/poll", { deviceCode: "made-up" });
    expect(unknown.status).toBe(401);
  });

  /** Each tampering of the provider's answer, refused with 401 and nothing created. */
  const TAMPERING: [string, (sub: string) => Promise<{ status: number }>][] = [
    [
      "a state that is not the one this browser was given",
      async (sub) => {
        const { browser, callback } = await browserToCallback(node, sub);
        callback.searchParams.set("state", `${callback.searchParams.get("state")}x`);
        return browser.request(callback);
      },
    ],
    [
      "a callback in another browser (no flow cookie)",
      async (sub) => {
        const { callback } = await browserToCallback(node, sub);
        return fetch(callback, { redirect: "manual" });
      },
    ],
    [
      "an ID token with another nonce",
      async (sub) => {
        provider.tamperTokens = async (body) => ({
          ...body,
          id_token: await provider.resign(body.id_token as string, { nonce: "another-nonce" }),
        });
        return (await browserSignIn(node, sub)).response;
      },
    ],
    [
      "an ID token whose signature does not verify",
      async (sub) => {
        provider.tamperTokens = async (body) => {
          const [header, payload, signature] = (body.id_token as string).split(".");
          const flipped = (signature[0] === "A" ? "B" : "A") + signature.slice(1);
          return { ...body, id_token: `${header}.${payload}.${flipped}` };
        };
        return (await browserSignIn(node, sub)).response;
      },
    ],
    [
      "an ID token signed by a key that is not the provider's",
      async (sub) => {
        provider.tamperTokens = async (body) => {
          const { SignJWT, generateKeyPair } = await import("jose");
          const { privateKey } = await generateKeyPair("RS256");
          const claims = decodeJwt(body.id_token as string);
          const forged = await new SignJWT(claims)
            .setProtectedHeader({ alg: "RS256", kid: "forged" })
            .sign(privateKey);
          return { ...body, id_token: forged };
        };
        return (await browserSignIn(node, sub)).response;
      },
    ],
    [
      "an ID token for another audience",
      async (sub) => {
        provider.tamperTokens = async (body) => ({
          ...body,
          id_token: await provider.resign(body.id_token as string, { aud: "another-client" }),
        });
        return (await browserSignIn(node, sub)).response;
      },
    ],
    [
      "an expired ID token",
      async (sub) => {
        const now = Math.floor(Date.now() / 1000);
        provider.tamperTokens = async (body) => ({
          ...body,
          id_token: await provider.resign(body.id_token as string, { iat: now - 7200, exp: now - 3600 }),
        });
        return (await browserSignIn(node, sub)).response;
      },
    ],
    [
      "an ID token from another issuer",
      async (sub) => {
        provider.tamperTokens = async (body) => ({
          ...body,
          id_token: await provider.resign(body.id_token as string, { iss: "https://evil.example" }),
        });
        return (await browserSignIn(node, sub)).response;
      },
    ],
  ];

  test.each(TAMPERING)("refused with 401, nothing created: %s", async (_what, attempt) => {
    const sub = newSubject();
    const before = await traces(node, provider.issuer, sub, sub);
    const response = await attempt(sub);
    expect(response.status).toBe(401);
    const after = await traces(node, provider.issuer, sub, sub);
    expect(after).toEqual({ links: 0, accounts: 0, codes: before.codes });
    expect(before).toMatchObject({ links: 0, accounts: 0 });
  });

  test("a username claim taken by a password account is refused with 409, never linked to it", async () => {
    const username = uniqueUsername("taken");
    const created = await client.post("/v1/accounts", { username, password: "correct horse battery" });
    expect(created.status).toBe(201);
    const sub = newSubject();
    provider.accounts.set(sub, { preferred_username: username });
    const signIn = await browserSignIn(node, sub);
    expect(signIn.response.status).toBe(409);
    expect(((await signIn.response.json()) as any).error.message).toContain("already taken");
    expect(await traces(node, provider.issuer, sub, username)).toMatchObject({ links: 0, accounts: 1 });
    const links = await node.database.db
      .select()
      .from(oidcIdentities)
      .where(eq(oidcIdentities.userId, created.body.userId));
    expect(links).toEqual([]);
  });

  test("a username claim that breaks the username rule, or is missing, is refused with 403 and creates nothing", async () => {
    for (const claims of [
      { preferred_username: "Alice Smith" },
      { preferred_username: "ab" },
      { preferred_username: 42 },
    ]) {
      const sub = newSubject();
      provider.accounts.set(sub, claims);
      const signIn = await browserSignIn(node, sub);
      expect(signIn.response.status).toBe(403);
      expect(((await signIn.response.json()) as any).error.message).toContain("preferred_username");
      expect(await traces(node, provider.issuer, sub, sub)).toMatchObject({ links: 0, accounts: 0 });
    }
  });

  test("after the provider rotates its signing key, sign-in continues with the new key once the cached key set may be refreshed", async () => {
    const sub = newSubject();
    const before = await browserSignIn(node, sub);
    expect(before.response.status).toBe(303);
    const oldKid = provider.idTokenKids.at(-1);
    const newKid = await provider.rotateKeys();
    expect(newKid).not.toBe(oldKid);
    // openid-client refetches the JWKS for an unknown kid once its copy is 60 s old: move the clock.
    setSystemTime(new Date(Date.now() + 61_000));
    try {
      const after = await browserSignIn(node, sub);
      expect(provider.idTokenKids.at(-1)).toBe(newKid);
      expect(after.response.status).toBe(303);
      const session = await client.post("/v1/oidc/sessions", {
        code: after.code,
        codeVerifier: after.verifier,
        registrationId: 3,
      });
      expect(session.status).toBe(201);
      const [link] = await node.database.db
        .select()
        .from(oidcIdentities)
        .where(and(eq(oidcIdentities.issuer, provider.issuer), eq(oidcIdentities.subject, sub)));
      expect(link.userId).toBe(session.body.userId);
    } finally {
      setSystemTime();
    }
  });
});
