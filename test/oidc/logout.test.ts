import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { generateKeyPair, SignJWT } from "jose";
import { CloseCode } from "../../src/protocol/index.ts";
import { type Api, api } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, type TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { TestSocket } from "../support/ws.ts";
import { browserSignIn, deviceSignIn, startWithProvider } from "./support.ts";

const EVENT = "http://schemas.openid.net/event/backchannel-logout";

describe.each(BACKENDS)("deprovisioning on %s", (backend) => {
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

  /** A subject signed in on two devices (browser and native flows). */
  async function signedInTwice() {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const browser = await browserSignIn(node, sub);
    const first = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 11,
    });
    const device = await deviceSignIn(client, sub);
    const second = await client.post("/v1/oidc/sessions", { code: device.code, registrationId: 12 });
    expect([first.status, second.status]).toEqual([201, 201]);
    return { sub, sessions: [first.body, second.body] };
  }

  const postLogout = (form: Record<string, string>) =>
    fetch(new URL("/v1/oidc/backchannel-logout", node.url), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(form),
    });

  /** A logout token as the provider would sign it, with `changes` applied (undefined removes a claim). */
  function logoutClaims(sub: string, changes: Record<string, unknown> = {}) {
    const now = Math.floor(Date.now() / 1000);
    const claims: Record<string, unknown> = {
      iss: provider.issuer,
      aud: provider.clientId,
      iat: now,
      exp: now + 120,
      jti: randomUUID(),
      events: { [EVENT]: {} },
      sub,
      sid: randomUUID(),
      ...changes,
    };
    for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
    return claims;
  }

  test("the provider's back-channel logout revokes every device of the user: live sockets closed (4401), tokens refused", async () => {
    const { sub, sessions } = await signedInTwice();
    const sockets = await Promise.all(sessions.map((s) => TestSocket.open(node.url, s.accessToken)));
    // The real provider signs and posts the logout token; it throws unless ClearBox answers 200.
    await provider.backchannelLogout(sub);
    for (const socket of sockets) {
      expect((await socket.whenClosed()).code).toBe(CloseCode.revoked);
    }
    for (const session of sessions) {
      expect((await client.get("/v1/devices", session.accessToken)).status).toBe(401);
      expect((await client.post("/v1/sessions/refresh", { refreshToken: session.refreshToken })).status).toBe(
        401,
      );
      await expect(TestSocket.open(node.url, session.accessToken)).rejects.toThrow();
    }
    const entries = await node.audit.entriesAbout(sessions[0].userId);
    expect(entries.at(-1)).toMatchObject({
      action: "oidc.logout",
      actor: "system",
      details: { via: "backchannel", devices: 2 },
    });
    // Signing in again is up to the provider: it still knows the user, so the same account comes back.
    const again = await browserSignIn(node, sub);
    const session = await client.post("/v1/oidc/sessions", {
      code: again.code,
      codeVerifier: again.verifier,
      deviceId: 1,
    });
    expect(session.body.userId).toBe(sessions[0].userId);
  });

  test("a logout token is accepted once: its jti replayed is refused with 400", async () => {
    const { sub, sessions } = await signedInTwice();
    const token = await provider.sign(logoutClaims(sub), { typ: "logout+jwt" });
    const first = await postLogout({ logout_token: token });
    expect(first.status).toBe(200);
    expect(first.headers.get("cache-control")).toBe("no-store");
    expect((await client.get("/v1/devices", sessions[0].accessToken)).status).toBe(401);
    const replay = await postLogout({ logout_token: token });
    expect(replay.status).toBe(400);
    expect(((await replay.json()) as any).error.message).toContain("jti");
  });

  test("a logout token for a subject ClearBox does not know is a success that changes nothing", async () => {
    const token = await provider.sign(logoutClaims(`unknown_${randomUUID()}`), { typ: "logout+jwt" });
    expect((await postLogout({ logout_token: token })).status).toBe(200);
  });

  const INVALID: [string, (sub: string) => Promise<string>][] = [
    [
      "a nonce (an ID token is not a logout token)",
      (sub) => provider.sign(logoutClaims(sub, { nonce: "n" })),
    ],
    ["no events claim", (sub) => provider.sign(logoutClaims(sub, { events: undefined }))],
    [
      "an events claim without the logout event",
      (sub) => provider.sign(logoutClaims(sub, { events: { other: {} } })),
    ],
    [
      "a logout event that is not an object",
      (sub) => provider.sign(logoutClaims(sub, { events: { [EVENT]: "yes" } })),
    ],
    ["another audience", (sub) => provider.sign(logoutClaims(sub, { aud: "another-client" }))],
    ["another issuer", (sub) => provider.sign(logoutClaims(sub, { iss: "https://evil.example" }))],
    ["no iat", (sub) => provider.sign(logoutClaims(sub, { iat: undefined }))],
    [
      "an iat ten minutes old",
      (sub) => provider.sign(logoutClaims(sub, { iat: Math.floor(Date.now() / 1000) - 600 })),
    ],
    [
      "an exp in the past",
      (sub) => provider.sign(logoutClaims(sub, { exp: Math.floor(Date.now() / 1000) - 120 })),
    ],
    ["no jti", (sub) => provider.sign(logoutClaims(sub, { jti: undefined }))],
    ["a sid but no sub", (sub) => provider.sign(logoutClaims(sub, { sub: undefined }))],
    ["neither sub nor sid", (sub) => provider.sign(logoutClaims(sub, { sub: undefined, sid: undefined }))],
    [
      "a signature by a key that is not the provider's",
      async (sub) => {
        const { privateKey } = await generateKeyPair("RS256");
        return new SignJWT(logoutClaims(sub))
          .setProtectedHeader({ alg: "RS256", kid: "forged" })
          .sign(privateKey);
      },
    ],
    [
      "no signature (alg none)",
      async (sub) => {
        const encode = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
        return `${encode({ alg: "none" })}.${encode(logoutClaims(sub))}.`;
      },
    ],
    ["a string that is not a JWT", async () => "not-a-jwt"],
  ];

  test("logout tokens that fail a check of Back-Channel Logout 1.0 §2.6 are refused with 400 and revoke nothing", async () => {
    const { sub, sessions } = await signedInTwice();
    for (const [what, make] of INVALID) {
      const response = await postLogout({ logout_token: await make(sub) });
      expect({ what, status: response.status }).toEqual({ what, status: 400 });
    }
    expect((await postLogout({ other: "x" })).status).toBe(400);
    for (const session of sessions) {
      expect((await client.get("/v1/devices", session.accessToken)).status).toBe(200);
    }
  });

  test("the admin call signs a subject out everywhere, for providers without back-channel logout", async () => {
    const { sub, sessions } = await signedInTwice();
    const socket = await TestSocket.open(node.url, sessions[1].accessToken);
    const admin = api(node.adminUrl);
    expect((await admin.post("/admin/v1/oidc/logout", { subject: sub })).status).toBe(401);
    const res = await admin.call("POST", "/admin/v1/oidc/logout", {
      body: { subject: sub },
      token: ADMIN_TOKEN,
    });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ userId: sessions[0].userId, devices: 2 });
    expect((await socket.whenClosed()).code).toBe(CloseCode.revoked);
    expect((await client.get("/v1/devices", sessions[0].accessToken)).status).toBe(401);
    const unknown = await admin.call("POST", "/admin/v1/oidc/logout", {
      body: { subject: "nobody" },
      token: ADMIN_TOKEN,
    });
    expect(unknown.status).toBe(404);
    const entries = await node.audit.entriesAbout(sessions[0].userId);
    expect(entries.at(-1)).toMatchObject({
      action: "oidc.logout",
      actor: "admin",
      details: { via: "admin" },
    });
  });
});

describe("back-channel logout while the provider's keys cannot be fetched", () => {
  let node: TestNode;
  let provider: TestProvider;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider("pglite"));
  });
  afterAll(async () => {
    await node?.teardown();
  });

  test("is answered 503, so the provider retries, and revokes nothing", async () => {
    const client = api(node.url);
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const browser = await browserSignIn(node, sub);
    const session = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 8,
    });
    const now = Math.floor(Date.now() / 1000);
    const token = await provider.sign(
      {
        iss: provider.issuer,
        aud: provider.clientId,
        iat: now,
        exp: now + 60,
        jti: randomUUID(),
        events: { [EVENT]: {} },
        sub,
      },
      { typ: "logout+jwt" },
    );
    await provider.close();
    const response = await fetch(new URL("/v1/oidc/backchannel-logout", node.url), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: token }),
    });
    expect(response.status).toBe(503);
    expect((await client.get("/v1/devices", session.body.accessToken)).status).toBe(200);
  });
});
