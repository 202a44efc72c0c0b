import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/** Bodies that must each be refused with 400 invalid, per route. */
const MALFORMED: Record<string, unknown[]> = {
  "/v1/accounts": [
    {},
    { username: "ab", password: "password123" },
    { username: "a".repeat(33), password: "password123" },
    { username: "Upper", password: "password123" },
    { username: "with space", password: "password123" },
    { username: "valid_name", password: "short" },
    { username: "valid_name", password: "p".repeat(257) },
    { username: "valid_name", password: 12345678 },
    { username: "valid_name", password: "password123", admin: true },
    [],
    "just a string",
    null,
  ],
  "/v1/sessions": [
    {},
    { username: "valid_name" },
    { username: "valid_name", password: "password123", deviceId: 0 },
    { username: "valid_name", password: "password123", deviceId: 128 },
    { username: "valid_name", password: "password123", deviceId: 1.5 },
    { username: "valid_name", password: "password123", registrationId: 0 },
    { username: "valid_name", password: "password123", registrationId: 16381 },
    { username: "valid_name", password: "password123", registrationId: "7" },
    { username: "valid_name", password: "password123", registrationId: 7, deviceName: "" },
    { username: "valid_name", password: "password123", registrationId: 7, deviceName: "n".repeat(65) },
    { username: "valid_name", password: "password123", registrationId: 7, extra: 1 },
  ],
  "/v1/sessions/refresh": [{}, { refreshToken: "" }, { refreshToken: 5 }, { refreshToken: "x".repeat(257) }],
};

describe.each(BACKENDS)("malformed requests on %s", (backend) => {
  let node: TestNode;
  let client: Api;
  let me: Awaited<ReturnType<typeof registerAndLogin>>;

  /** Row counts of every table, to prove a refused request changed nothing (generations as text: a
   * device starts at a random one, so their sum can pass the int range). */
  async function snapshot() {
    const result = await node.database.db.execute(sql`
      select (select count(*) from accounts)::int as accounts,
             (select count(*) from devices)::int as devices,
             (select count(*) from refresh_tokens)::int as refresh_tokens,
             (select count(*) from refresh_tokens where spent_at is not null)::int as spent,
             (select coalesce(sum(token_generation), 0) from devices)::text as generations`);
    return (result as unknown as { rows?: unknown[] }).rows?.[0] ?? (result as unknown as unknown[])[0];
  }

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    me = await registerAndLogin(client);
    // An account named in the malformed login bodies, so a lax validator would have something to log into.
    await client.post("/v1/accounts", { username: "valid_name", password: "password123" });
  });
  afterAll(() => node?.teardown());

  for (const [path, bodies] of Object.entries(MALFORMED)) {
    test(`POST ${path} refuses each malformed body with 400 invalid and changes nothing`, async () => {
      const before = await snapshot();
      for (const body of bodies) {
        const res = await client.post(path, body);
        expect({ body, status: res.status }).toEqual({ body, status: 400 });
        expect(res.body.error.code).toBe("invalid");
        expect(typeof res.body.error.message).toBe("string");
      }
      expect(await snapshot()).toEqual(before);
    });
  }

  test("a body that is not JSON is 400 invalid and leaks no parser internals", async () => {
    const before = await snapshot();
    for (const path of Object.keys(MALFORMED)) {
      const res = await client.call("POST", path, { raw: '{"username": "abc", ' });
      expect(res.status).toBe(400);
      expect(res.body).toEqual({ error: { code: "invalid", message: "body is not valid JSON" } });
    }
    expect(await snapshot()).toEqual(before);
  });

  test("DELETE /v1/devices/:deviceId refuses ids that are not 1-127 with 400 and removes nothing", async () => {
    const before = await snapshot();
    for (const id of ["abc", "0", "128", "-1", "1.5", "1e3"]) {
      const res = await client.delete(`/v1/devices/${id}`, me.accessToken);
      expect({ id, status: res.status }).toEqual({ id, status: 400 });
      expect(res.body.error.code).toBe("invalid");
    }
    expect(await snapshot()).toEqual(before);
  });

  test("an unknown route is 404 not_found in the protocol's error shape", async () => {
    const res = await client.get("/v1/nothing-here");
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: { code: "not_found", message: "no such route" } });
  });

  test("a body over 1 MiB is refused with 413", async () => {
    const res = await client.call("POST", "/v1/accounts", {
      raw: JSON.stringify({ username: "x".repeat(2 << 20) }),
    });
    expect(res.status).toBe(413);
  });

  test("no error reply carries a stack trace or SQL", async () => {
    const replies = [
      await client.post("/v1/accounts", { username: "valid_name", password: "password123" }),
      await client.post("/v1/sessions", { username: "valid_name", password: "wrong-password" }),
      await client.call("POST", "/v1/sessions", { raw: "{" }),
    ];
    for (const res of replies) {
      const text = JSON.stringify(res.body);
      expect(text).not.toMatch(/\bat .*\.ts:\d+|insert into|select .* from|duplicate key|constraint/i);
      expect(Object.keys(res.body)).toEqual(["error"]);
    }
  });
});
