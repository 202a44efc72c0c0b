import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

describe("admin listener", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(() => node?.teardown());

  test("refuses a missing or wrong bearer token with 401, on known and unknown paths", async () => {
    const admin = api(node.adminUrl);
    for (const token of [undefined, "wrong-token-0123456789", `${ADMIN_TOKEN}x`]) {
      for (const path of ["/metrics", "/admin/v1/does-not-exist"]) {
        const res = await admin.get(path, token);
        expect({ path, token, status: res.status }).toEqual({ path, token, status: 401 });
        expect(res.body.error.code).toBe("unauthorized");
      }
    }
  });

  test("serves Prometheus metrics with request counts and latencies to the admin token", async () => {
    await api(node.url).get("/healthz");
    const res = await fetch(`${node.adminUrl}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    expect(text).toMatch(/clearbox_http_requests_total\{method="GET",route="\/healthz",status="200"/);
    expect(text).toContain("clearbox_http_request_duration_seconds_bucket");
  });

  test("admin routes are not served on the public port", async () => {
    for (const path of ["/metrics", "/admin/v1/cluster"]) {
      const res = await api(node.url).get(path, ADMIN_TOKEN);
      expect(res.status).toBe(404);
    }
  });

  test("GET /admin/v1/users?username= gives the operator the id export and erasure take; the name stays out of logs and audit", async () => {
    const me = await registerAndLogin(api(node.url));
    const admin = api(node.adminUrl);
    const found = await admin.get(`/admin/v1/users?username=${me.username}`, ADMIN_TOKEN);
    expect({ status: found.status, body: found.body }).toEqual({
      status: 200,
      body: { userId: me.userId, username: me.username },
    });
    // The id it gave is the one the export route takes.
    const exported = await admin.get(`/admin/v1/users/${found.body.userId}/export`, ADMIN_TOKEN);
    expect(exported.body.account.username).toBe(me.username);
    const statuses = await Promise.all(
      [`?username=${me.username.slice(0, -1)}`, "?username=No%20Such", ""].map(
        async (query) => (await admin.get(`/admin/v1/users${query}`, ADMIN_TOKEN)).status,
      ),
    );
    expect(statuses).toEqual([404, 400, 400]);
    expect((await admin.get(`/admin/v1/users?username=${me.username}`)).status).toBe(401);
    const audit = await admin.get("/admin/v1/audit?limit=1000", ADMIN_TOKEN);
    const calls = audit.body.entries.filter(
      (entry: { action: string; details: { route?: string } }) =>
        entry.action === "admin.call" && entry.details.route === "/admin/v1/users",
    );
    expect(calls.length).toBeGreaterThanOrEqual(1);
    expect(JSON.stringify(audit.body)).not.toContain(me.username);
    expect(node.logs.join("")).not.toContain(me.username);
  });

  test("GET /admin/v1/users?username= with capitals finds the account; a name that breaks the rule is refused in words", async () => {
    const me = await registerAndLogin(api(node.url));
    const admin = api(node.adminUrl);
    // An operator types the name as the person wrote it: usernames have no capitals.
    const capitalised = `${me.username[0]?.toUpperCase()}${me.username.slice(1).toUpperCase()}`;
    const found = await admin.get(`/admin/v1/users?username=${capitalised}`, ADMIN_TOKEN);
    expect({ status: found.status, body: found.body }).toEqual({
      status: 200,
      body: { userId: me.userId, username: me.username },
    });
    const refused = await admin.get("/admin/v1/users?username=a%20b", ADMIN_TOKEN);
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toBe(
      "username: must be 3 to 32 characters of a-z, 0-9, '_', '.' and '-' (lower case)",
    );
  });

  test("a refused parameter is named in the 400, as on the public listener, and its value is not echoed", async () => {
    const admin = api(node.adminUrl);
    // A DPO pasting a name as the person wrote it (with a space) or a wrong id learns what was wrong.
    const refusals = [
      ["/admin/v1/users?username=Some%20One", "username: "],
      ["/admin/v1/users/not-a-user-id/export", "userId: "],
    ] as const;
    for (const [path, field] of refusals) {
      const res = await admin.get(path, ADMIN_TOKEN);
      expect(res.status).toBe(400);
      expect(res.body.error.code).toBe("invalid");
      expect(res.body.error.message.startsWith(field)).toBe(true);
      expect(res.body.error.message).not.toMatch(/Some One|not-a-user-id/);
    }
    const erase = await fetch(`${node.adminUrl}/admin/v1/users/not-a-user-id/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(erase.status).toBe(400);
    expect(((await erase.json()) as { error: { message: string } }).error.message).toStartWith("userId: ");
  });

  test("listens on the loopback address by default", () => {
    expect(new URL(node.adminUrl).hostname).toBe("127.0.0.1");
  });
});

describe("admin listener without ADMIN_TOKEN", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { ADMIN_TOKEN: "" } });
  });
  afterAll(() => node?.teardown());

  test("says at start that the admin RPC is off; a node with the token does not", async () => {
    const warning = '"msg":"ADMIN_TOKEN is not set: the admin RPC refuses every call';
    expect(node.logs.join("")).toContain(warning);
    const withToken = await startTestNode("pglite");
    try {
      expect(withToken.logs.join("")).toContain("clearbox node started");
      expect(withToken.logs.join("")).not.toContain(warning);
    } finally {
      await withToken.teardown();
    }
  });

  test("refuses every call, whatever token is sent", async () => {
    for (const token of [undefined, ADMIN_TOKEN, "anything-at-all-123"]) {
      const res = await api(node.adminUrl).get("/metrics", token);
      expect(res.status).toBe(401);
      expect(res.body.error.message).toContain("ADMIN_TOKEN is not set");
    }
  });

  test("logs of a whole session flow hold no password, access token or refresh token", async () => {
    const client = api(node.url);
    const me = await registerAndLogin(client, "a-very-secret-password");
    await client.post("/v1/sessions", { username: me.username, password: "a-wrong-password-here" });
    const refreshed = await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    await client.post("/v1/sessions/refresh", { refreshToken: me.refreshToken });
    await client.get("/v1/devices", refreshed.body.accessToken);
    const logs = node.logs.join("");
    expect(logs).toContain('"msg":"request"');
    for (const secret of [
      "a-very-secret-password",
      "a-wrong-password-here",
      me.accessToken,
      me.refreshToken,
      refreshed.body.accessToken,
      refreshed.body.refreshToken,
    ]) {
      expect(logs).not.toContain(secret);
    }
  });
});
