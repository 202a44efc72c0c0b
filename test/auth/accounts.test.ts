import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, registerAndLogin, uniqueUsername } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

describe.each(BACKENDS)("accounts and sessions on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("registering returns 201 with a user id", async () => {
    const res = await client.post("/v1/accounts", { username: uniqueUsername(), password: "password123" });
    expect(res.status).toBe(201);
    expect(res.body.userId).toMatch(/^[0-9a-f-]{36}$/);
  });

  test("a taken username is 409 conflict and creates nothing", async () => {
    const username = uniqueUsername();
    expect((await client.post("/v1/accounts", { username, password: "password123" })).status).toBe(201);
    const again = await client.post("/v1/accounts", { username, password: "other password" });
    expect(again.status).toBe(409);
    expect(again.body).toEqual({ error: { code: "conflict", message: "username is taken" } });
    const login = await client.post("/v1/sessions", { username, password: "password123", registrationId: 1 });
    expect(login.status).toBe(201);
  });

  test("login creates a device and returns access and refresh tokens", async () => {
    const username = uniqueUsername();
    await client.post("/v1/accounts", { username, password: "password123" });
    const res = await client.post("/v1/sessions", {
      username,
      password: "password123",
      registrationId: 77,
      deviceName: "laptop",
    });
    expect(res.status).toBe(201);
    expect(res.body.deviceId).toBe(1);
    expect(res.body.expiresIn).toBe(900);
    expect(res.body.accessToken.split(".")).toHaveLength(3);
    expect(res.body.refreshToken.length).toBeGreaterThan(30);
    const devices = await client.get("/v1/devices", res.body.accessToken);
    expect(devices.status).toBe(200);
    expect(devices.body.devices).toHaveLength(1);
    expect(devices.body.devices[0]).toMatchObject({ deviceId: 1, name: "laptop" });
  });

  test("login with an existing deviceId reuses that device", async () => {
    const me = await registerAndLogin(client);
    const again = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      deviceId: me.deviceId,
    });
    expect(again.status).toBe(201);
    expect(again.body.deviceId).toBe(me.deviceId);
    const devices = await client.get("/v1/devices", again.body.accessToken);
    expect(devices.body.devices).toHaveLength(1);
  });

  test("login with a deviceId that does not exist is 404 and creates nothing", async () => {
    const me = await registerAndLogin(client);
    const res = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      deviceId: 9,
    });
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe("not_found");
    expect((await client.get("/v1/devices", me.accessToken)).body.devices).toHaveLength(1);
  });

  test("a password outside 8-256 characters is 400 invalid saying the rule in words, and creates nothing", async () => {
    const username = uniqueUsername("shortpw");
    for (const password of ["short", "x".repeat(257)]) {
      const res = await client.post("/v1/accounts", { username, password });
      expect(res.status).toBe(400);
      expect(res.body.error).toEqual({ code: "invalid", message: "password: must be 8 to 256 characters" });
    }
    const login = await client.post("/v1/sessions", { username, password: "long enough now" });
    expect(login.status).toBe(401);
  });

  test("a new device without registrationId is 400 invalid", async () => {
    const me = await registerAndLogin(client);
    const res = await client.post("/v1/sessions", { username: me.username, password: me.password });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe("invalid");
  });

  test("a second device gets the next free id, and a freed id is reused", async () => {
    const me = await registerAndLogin(client);
    const login = (name: string) =>
      client.post("/v1/sessions", {
        username: me.username,
        password: me.password,
        registrationId: 5,
        deviceName: name,
      });
    const second = await login("two");
    const third = await login("three");
    expect([second.body.deviceId, third.body.deviceId]).toEqual([2, 3]);
    expect((await client.delete("/v1/devices/2", me.accessToken)).status).toBe(204);
    expect((await login("again")).body.deviceId).toBe(2);
  });

  test("concurrent logins of one account never share a device id", async () => {
    const me = await registerAndLogin(client);
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        client.post("/v1/sessions", { username: me.username, password: me.password, registrationId: 9 }),
      ),
    );
    const ids = results.map((r) => r.body.deviceId);
    expect(results.every((r) => r.status === 201)).toBe(true);
    expect(new Set(ids).size).toBe(8);
  });

  test("wrong password and unknown username are both 401 with the same message", async () => {
    const me = await registerAndLogin(client);
    const wrong = await client.post("/v1/sessions", { username: me.username, password: "not the password" });
    const unknown = await client.post("/v1/sessions", {
      username: uniqueUsername(),
      password: "whatever123",
    });
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(wrong.body).toEqual(unknown.body);
    expect(wrong.body.error.code).toBe("unauthorized");
  });

  test("the 128th device of an account is 409", async () => {
    const me = await registerAndLogin(client);
    // Fill ids 2..127 straight in the database: 126 argon2 logins would only slow the suite down.
    const { devices } = await import("../../src/db/schema.ts");
    await node.database.db
      .insert(devices)
      .values(
        Array.from({ length: 126 }, (_, i) => ({ userId: me.userId, deviceId: i + 2, registrationId: 1 })),
      );
    const res = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 3,
    });
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe("conflict");
  });

  test("a stored password is an argon2id hash, never the password", async () => {
    const me = await registerAndLogin(client);
    const { accounts } = await import("../../src/db/schema.ts");
    const { eq } = await import("drizzle-orm");
    const [row] = await node.database.db.select().from(accounts).where(eq(accounts.id, me.userId));
    expect(row.passwordHash?.startsWith("$argon2id$")).toBe(true);
    // The cost comes from PASSWORD_HASH_* (test nodes use a low one, see test/support/node.ts).
    expect(row.passwordHash).toContain("$m=1024,t=1,");
    expect(row.passwordHash).not.toContain(me.password);
  });

  test("after 10 wrong passwords from one address an account's logins from there are refused with 429 for the window; others are not", async () => {
    const me = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    for (let i = 0; i < 10; i++) {
      const wrong = await client.post("/v1/sessions", {
        username: me.username,
        password: `guess number ${i}`,
      });
      expect(wrong.status).toBe(401);
    }
    const blocked = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      deviceId: 1,
    });
    expect(blocked.status).toBe(429);
    expect(blocked.body.error.code).toBe("rate_limited");
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(60);
    const fine = await client.post("/v1/sessions", {
      username: other.username,
      password: other.password,
      deviceId: 1,
    });
    expect(fine.status).toBe(201);
    // Existing sessions of the account keep working: only password logins wait.
    expect((await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken })).status).toBe(201);
  });
});
