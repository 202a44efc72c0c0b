import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { jwt } from "@elysiajs/jwt";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/** Signs arbitrary claims with a given secret, to forge tokens the server must refuse. */
function signer(secret: string) {
  return jwt({ name: "jwt", secret, alg: "HS256" }).decorator.jwt;
}

describe.each(BACKENDS)("access and refresh tokens on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // No grace window: a second presentation of a refresh token is always the theft signal here
    // (test/sessions/refresh-grace.test.ts covers the window).
    node = await startTestNode(backend, { env: { REFRESH_GRACE_SECONDS: "0" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("a valid access token reaches a protected route", async () => {
    const me = await registerAndLogin(client);
    expect((await client.get("/v1/devices", me.accessToken)).status).toBe(200);
  });

  test("no token, a malformed header and garbage are 401 unauthorized", async () => {
    const variants: Record<string, string>[] = [
      {},
      { authorization: "Basic abc" },
      { authorization: "Bearer not.a.jwt" },
    ];
    for (const headers of variants) {
      const res = await client.call("GET", "/v1/devices", { headers });
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe("unauthorized");
    }
  });

  test("an expired token is 401", async () => {
    const me = await registerAndLogin(client);
    const past = Math.floor(Date.now() / 1000) - 60;
    const token = await signer(node.config.jwtSecret).sign({
      sub: me.userId,
      dev: me.deviceId,
      gen: 0,
      exp: past,
    });
    expect((await client.get("/v1/devices", token)).status).toBe(401);
  });

  test("a token signed with another secret is 401", async () => {
    const me = await registerAndLogin(client);
    const token = await signer("some-other-secret-that-is-long-enough-9876").sign({
      sub: me.userId,
      dev: me.deviceId,
      gen: 0,
      exp: "5m",
    });
    expect((await client.get("/v1/devices", token)).status).toBe(401);
  });

  test("a token whose payload was edited (forged signature) is 401", async () => {
    const me = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    const [header, , signature] = me.accessToken.split(".");
    const payload = Buffer.from(
      JSON.stringify({ sub: other.userId, dev: 1, gen: 0, exp: Math.floor(Date.now() / 1000) + 600 }),
    ).toString("base64url");
    const res = await client.get("/v1/devices", `${header}.${payload}.${signature}`);
    expect(res.status).toBe(401);
  });

  test("an unsigned (alg none) token is 401", async () => {
    const me = await registerAndLogin(client);
    const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const token = `${enc({ alg: "none", typ: "JWT" })}.${enc({ sub: me.userId, dev: 1, gen: 0, exp: 9999999999 })}.`;
    expect((await client.get("/v1/devices", token)).status).toBe(401);
  });

  test("refresh rotates: the new pair works and the old refresh token is spent", async () => {
    const me = await registerAndLogin(client);
    const refreshed = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    expect(refreshed.status).toBe(201);
    expect(refreshed.body).toMatchObject({ userId: me.userId, deviceId: me.deviceId, expiresIn: 900 });
    expect(refreshed.body.refreshToken).not.toBe(me.refreshToken);
    expect((await client.get("/v1/devices", refreshed.body.accessToken)).status).toBe(200);
    const next = await client.post("/v1/sessions/refresh", { refreshToken: refreshed.body.refreshToken });
    expect(next.status).toBe(201);
  });

  test("reusing a spent refresh token revokes every token of the device", async () => {
    const me = await registerAndLogin(client);
    const first = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    expect(first.status).toBe(201);
    const replay = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    expect(replay.status).toBe(401);
    // The thief's replay burns the legitimate holder's newer tokens too.
    expect((await client.get("/v1/devices", first.body.accessToken)).status).toBe(401);
    expect(
      (await client.post("/v1/sessions/refresh", { refreshToken: first.body.refreshToken })).status,
    ).toBe(401);
    // Logging in again with the password restores access to the same device.
    const again = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      deviceId: me.deviceId,
    });
    expect(again.status).toBe(201);
    expect((await client.get("/v1/devices", again.body.accessToken)).status).toBe(200);
  });

  test("revocation by reuse leaves the account's other devices signed in", async () => {
    const me = await registerAndLogin(client);
    const second = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 3,
    });
    await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    expect((await client.get("/v1/devices", second.body.accessToken)).status).toBe(200);
  });

  test("an unknown refresh token is 401", async () => {
    const res = await client.post("/v1/sessions/refresh", { refreshToken: "definitely-not-a-token" });
    expect(res.status).toBe(401);
    expect(res.body.error.code).toBe("unauthorized");
  });

  test("removing a device revokes its access and refresh tokens", async () => {
    const me = await registerAndLogin(client);
    const second = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 3,
    });
    expect((await client.delete(`/v1/devices/${second.body.deviceId}`, me.accessToken)).status).toBe(204);
    expect((await client.get("/v1/devices", second.body.accessToken)).status).toBe(401);
    expect(
      (await client.post("/v1/sessions/refresh", { refreshToken: second.body.refreshToken })).status,
    ).toBe(401);
    const left = await client.get("/v1/devices", me.accessToken);
    expect(left.body.devices.map((d: { deviceId: number }) => d.deviceId)).toEqual([me.deviceId]);
  });

  test("removing a device that does not exist is 404", async () => {
    const me = await registerAndLogin(client);
    const res = await client.delete("/v1/devices/42", me.accessToken);
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe("not_found");
  });

  test("one user cannot see or remove another user's devices", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const seen = await client.get("/v1/devices", alice.accessToken);
    expect(seen.body.devices).toHaveLength(1);
    // Device 1 exists for bob, but DELETE acts on the caller's own account only: alice removes her own device 1.
    const bobDevices = await client.get("/v1/devices", bob.accessToken);
    expect(bobDevices.body.devices).toHaveLength(1);
    await client.delete("/v1/devices/1", alice.accessToken);
    expect((await client.get("/v1/devices", bob.accessToken)).body.devices).toHaveLength(1);
  });
});
