import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { type Api, api, uniqueUsername } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

const PASSWORD = "password123";

/** How many accounts the node holds. */
async function accountCount(node: TestNode): Promise<number> {
  const result = await node.database.db.execute(sql`select count(*)::int as n from accounts`);
  const rows =
    (result as unknown as { rows?: { n: number }[] }).rows ?? (result as unknown as { n: number }[]);
  return rows[0].n;
}

/** Signs up from `address` (through the trusted proxy 127.0.0.1). */
function signUp(client: Api, address: string, body: Record<string, unknown> = {}) {
  return client.call("POST", "/v1/accounts", {
    body: { username: uniqueUsername("reg"), password: PASSWORD, ...body },
    headers: { "x-forwarded-for": address },
  });
}

function tally(statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

describe("REGISTRATION=open", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      env: { TRUSTED_PROXIES: "127.0.0.1", REGISTRATIONS_PER_ADDRESS: "3" },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("an address may create REGISTRATIONS_PER_ADDRESS accounts an hour; the next is 429 and creates nothing", async () => {
    const taken = uniqueUsername("taken");
    const statuses = [
      (await signUp(client, "203.0.113.1", { username: taken })).status,
      // A refused sign-up (name taken) counts too: each one costs the server a password hash.
      (await signUp(client, "203.0.113.1", { username: taken })).status,
      (await signUp(client, "203.0.113.1")).status,
    ];
    expect(statuses).toEqual([201, 409, 201]);
    const before = await accountCount(node);
    const refused = await signUp(client, "203.0.113.1");
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(60);
    expect(await accountCount(node)).toBe(before);
    // Another address has its own budget.
    expect((await signUp(client, "203.0.113.2")).status).toBe(201);
  });

  test("parallel sign-ups from one address cannot pass the budget", async () => {
    const replies = await Promise.all(Array.from({ length: 8 }, () => signUp(client, "198.51.100.40")));
    expect(tally(replies.map((r) => r.status))).toEqual({ 201: 3, 429: 5 });
  });

  test("an invite token is not needed, and not spent, when registration is open", async () => {
    expect((await signUp(client, "198.51.100.41", { registrationToken: "anything" })).status).toBe(201);
  });

  test("the record of processing says who may sign up", async () => {
    const ropa = await api(node.adminUrl).get("/admin/v1/ropa", ADMIN_TOKEN);
    expect(ropa.body.registration.mode).toBe("open");
    expect(ropa.body.registration.rule).toContain(
      "anyone may create an account (at most 3 per client address",
    );
    expect(ropa.body.dataSubjects[0]).toContain("anyone may sign up");
  });
});

describe("REGISTRATION=closed", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { REGISTRATION: "closed" } });
  });
  afterAll(() => node?.teardown());

  test("every sign-up is 403 forbidden, with or without a token, and creates nothing", async () => {
    const client = api(node.url);
    for (const body of [
      { username: uniqueUsername("closed"), password: PASSWORD },
      { username: uniqueUsername("closed"), password: PASSWORD, registrationToken: "some-token" },
    ]) {
      const res = await client.post("/v1/accounts", body);
      expect(res.status).toBe(403);
      expect(res.body.error).toEqual({ code: "forbidden", message: "registration is closed on this server" });
    }
    expect(await accountCount(node)).toBe(0);
    const ropa = await api(node.adminUrl).get("/admin/v1/ropa", ADMIN_TOKEN);
    expect(ropa.body.registration).toEqual({ mode: "closed", rule: "no account is created with a password" });
  });
});

describe("REGISTRATION=invite", () => {
  let node: TestNode;
  let client: Api;
  let admin: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres", {
      env: { REGISTRATION: "invite", TRUSTED_PROXIES: "127.0.0.1", REGISTRATIONS_PER_ADDRESS: "20" },
    });
    client = api(node.url);
    admin = api(node.adminUrl);
  });
  afterAll(() => node?.teardown());

  const issue = (body: Record<string, unknown> = {}) =>
    admin.call("POST", "/admin/v1/registration-tokens", { body, token: ADMIN_TOKEN });

  test("without a token, or with one that was never issued, a sign-up is 403 and creates nothing", async () => {
    const before = await accountCount(node);
    const missing = await signUp(client, "192.0.2.1");
    expect(missing.status).toBe(403);
    expect(missing.body.error).toEqual({ code: "forbidden", message: "registration needs an invite token" });
    const unknown = await signUp(client, "192.0.2.1", { registrationToken: "never-issued" });
    expect(unknown.status).toBe(403);
    expect(unknown.body.error.message).toBe("the invite token is not valid");
    expect(await accountCount(node)).toBe(before);
  });

  test("a single-use token creates one account; a refused sign-up (name taken) does not spend it", async () => {
    const created = await issue({ usesAllowed: 1 });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ usesAllowed: 1, completed: 0, expiresAt: null });
    expect(created.body.token).toMatch(/^[A-Za-z0-9_-]{24}$/);
    const token = created.body.token as string;

    const existing = uniqueUsername("exists");
    const open = await issue();
    expect(
      (await signUp(client, "192.0.2.2", { username: existing, registrationToken: open.body.token })).status,
    ).toBe(201);
    expect((await signUp(client, "192.0.2.2", { username: existing, registrationToken: token })).status).toBe(
      409,
    );
    expect((await signUp(client, "192.0.2.2", { registrationToken: token })).status).toBe(201);
    const reused = await signUp(client, "192.0.2.2", { registrationToken: token });
    expect(reused.status).toBe(403);

    const listed = await admin.get("/admin/v1/registration-tokens?valid=false", ADMIN_TOKEN);
    expect(listed.body.tokens.find((t: { token: string }) => t.token === token)).toMatchObject({
      usesAllowed: 1,
      completed: 1,
    });
    const valid = await admin.get("/admin/v1/registration-tokens?valid=true", ADMIN_TOKEN);
    expect(valid.body.tokens.some((t: { token: string }) => t.token === token)).toBe(false);
  });

  test("a token for 3 accounts, raced by 6 parallel sign-ups, creates exactly 3", async () => {
    const { token } = (await issue({ usesAllowed: 3 })).body as { token: string };
    const before = await accountCount(node);
    const replies = await Promise.all(
      Array.from({ length: 6 }, (_, i) => signUp(client, `192.0.2.${10 + i}`, { registrationToken: token })),
    );
    expect(tally(replies.map((r) => r.status))).toEqual({ 201: 3, 403: 3 });
    expect(await accountCount(node)).toBe(before + 3);
  });

  test("an expired or revoked token is refused; revoking twice is 404", async () => {
    const soon = await issue({ token: `soon-${Date.now()}`, expiresAt: Date.now() + 1000 });
    expect(soon.status).toBe(201);
    await Bun.sleep(1100);
    expect((await signUp(client, "192.0.2.30", { registrationToken: soon.body.token })).status).toBe(403);

    const { token } = (await issue()).body as { token: string };
    const revoked = await admin.call("DELETE", `/admin/v1/registration-tokens/${token}`, {
      token: ADMIN_TOKEN,
    });
    expect(revoked.status).toBe(204);
    expect((await signUp(client, "192.0.2.30", { registrationToken: token })).status).toBe(403);
    const again = await admin.call("DELETE", `/admin/v1/registration-tokens/${token}`, {
      token: ADMIN_TOKEN,
    });
    expect(again.status).toBe(404);
  });

  test("the admin routes refuse bad input and a duplicate token, and need the admin token", async () => {
    const chosen = `welcome-${Date.now()}`;
    expect((await issue({ token: chosen })).status).toBe(201);
    expect((await issue({ token: chosen })).status).toBe(409);
    for (const body of [
      { token: "has space" },
      { token: "x".repeat(65) },
      { usesAllowed: 0 },
      { usesAllowed: "3" },
      { expiresAt: Date.now() - 1000 },
      { unknown: true },
    ]) {
      const res = await issue(body);
      expect({ body, status: res.status }).toEqual({ body, status: 400 });
      expect(res.body.error.code).toBe("invalid");
    }
    expect((await admin.call("POST", "/admin/v1/registration-tokens", { body: {} })).status).toBe(401);
    expect((await admin.get("/admin/v1/registration-tokens")).status).toBe(401);
  });

  test("tokens never reach the audit trail: admin calls are recorded by route pattern", async () => {
    const chosen = `audited-${Date.now()}`;
    await issue({ token: chosen });
    await admin.call("DELETE", `/admin/v1/registration-tokens/${chosen}`, { token: ADMIN_TOKEN });
    const result = await node.database.db.execute(sql`select details::text as d from audit_log`);
    const rows =
      (result as unknown as { rows?: { d: string }[] }).rows ?? (result as unknown as { d: string }[]);
    const details = rows.map((r) => r.d).join("\n");
    expect(details).toContain("/admin/v1/registration-tokens/:token");
    expect(details).not.toContain(chosen);
  });

  test("the record of processing names invite-only registration", async () => {
    const ropa = await admin.get("/admin/v1/ropa", ADMIN_TOKEN);
    expect(ropa.body.registration.mode).toBe("invite");
    expect(ropa.body.dataSubjects[0]).toContain("invited with a registration token");
  });
});
