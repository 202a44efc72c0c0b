import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { MAX_JSON_DEPTH } from "../../src/protocol/index.ts";
import { type Api, api, registerAndLogin, relate, uniqueUsername } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";
import { ackFrom, messagesBeforeMarker, TestSocket } from "../support/ws.ts";

const nestedObjects = (depth: number) => `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`;
const nestedArrays = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;

/** Row counts of the tables a refused request could have touched. */
async function snapshot(node: TestNode) {
  const result = await node.database.db.execute(sql`
    select (select count(*) from accounts)::int as accounts,
           (select count(*) from devices)::int as devices,
           (select count(*) from refresh_tokens)::int as refresh_tokens,
           (select count(*) from groups)::int as groups,
           (select count(*) from group_members)::int as members`);
  return (result as unknown as { rows?: unknown[] }).rows?.[0] ?? (result as unknown as unknown[])[0];
}

describe.each(BACKENDS)("hostile request bodies on %s", (backend) => {
  let node: TestNode;
  let client: Api;
  let me: Awaited<ReturnType<typeof registerAndLogin>>;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
    me = await registerAndLogin(client);
  });
  afterAll(() => node?.teardown());

  test("12,000 nested objects to POST /v1/accounts: 400 naming the depth limit, while /healthz answers", async () => {
    const before = await snapshot(node);
    const hostile = client.call("POST", "/v1/accounts", { raw: nestedObjects(12_000) });
    const health = fetch(`${node.url}/healthz`);
    const [refused, healthz] = await Promise.all([hostile, health]);
    expect(refused.status).toBe(400);
    expect(refused.body).toEqual({
      error: { code: "invalid", message: `body nests deeper than ${MAX_JSON_DEPTH} levels` },
    });
    expect(healthz.status).toBe(200);
    expect(await snapshot(node)).toEqual(before);
  });

  test("a 100,000-deep array is 400, not 500, on every JSON route", async () => {
    const before = await snapshot(node);
    const routes: [string, string, string?][] = [
      ["POST", "/v1/accounts"],
      ["POST", "/v1/sessions"],
      ["POST", "/v1/sessions/refresh"],
      ["PUT", "/v1/keys", me.accessToken],
      ["POST", "/v1/groups", me.accessToken],
      ["DELETE", "/v1/me", me.accessToken],
    ];
    for (const [method, path, token] of routes) {
      const res = await client.call(method, path, { raw: nestedArrays(100_000), token });
      expect({ path, status: res.status, code: res.body.error?.code }).toEqual({
        path,
        status: 400,
        code: "invalid",
      });
      expect(res.body.error.message).toContain(String(MAX_JSON_DEPTH));
    }
    expect(await snapshot(node)).toEqual(before);
  });

  test("nesting within the limit reaches the schema check, whose message names the field, not the value", async () => {
    const value = `${"[".repeat(MAX_JSON_DEPTH - 1)}"hostile-marker"${"]".repeat(MAX_JSON_DEPTH - 1)}`;
    const res = await client.call("POST", "/v1/accounts", {
      raw: `{"username":${value},"password":"password123"}`,
    });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe("invalid");
    expect(res.body.error.message).toStartWith("username:");
    expect(res.body.error.message).not.toContain("hostile-marker");
    expect(node.logs.join("")).not.toContain("hostile-marker");
  });

  test("JSON routes accept only application/json: forms, multipart and text/plain get 415 invalid", async () => {
    const before = await snapshot(node);
    const username = uniqueUsername("form");
    const attempts: [string, string | URLSearchParams | FormData, Record<string, string>][] = [
      [
        "form-encoded",
        new URLSearchParams({ username, password: "password123" }),
        { "content-type": "application/x-www-form-urlencoded" },
      ],
      [
        "multipart",
        (() => {
          const form = new FormData();
          form.set("username", username);
          form.set("password", "password123");
          return form;
        })(),
        {},
      ],
      ["text/plain", JSON.stringify({ username, password: "password123" }), { "content-type": "text/plain" }],
      ["no content type", JSON.stringify({ username, password: "password123" }), {}],
      [
        "another charset",
        JSON.stringify({ username, password: "password123" }),
        { "content-type": "application/json; charset=latin1" },
      ],
    ];
    for (const path of ["/v1/accounts", "/v1/sessions"]) {
      for (const [what, body, headers] of attempts) {
        const res = await fetch(`${node.url}${path}`, { method: "POST", body, headers });
        const reply = (await res.json()) as { error: { code: string; message: string } };
        expect({ path, what, status: res.status, code: reply.error.code }).toEqual({
          path,
          what,
          status: 415,
          code: "invalid",
        });
        expect(reply.error.message).toContain("application/json");
      }
    }
    expect(await snapshot(node)).toEqual(before);
    // The media type with its optional charset is still fine.
    const ok = await fetch(`${node.url}/v1/accounts`, {
      method: "POST",
      body: JSON.stringify({ username, password: "password123" }),
      headers: { "content-type": "Application/JSON; charset=UTF-8" },
    });
    expect(ok.status).toBe(201);
  });

  test("the one form route (OIDC back-channel logout) takes a form only, under the same text rule", async () => {
    const path = `${node.url}/v1/oidc/backchannel-logout`;
    const json = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ logout_token: "x" }),
    });
    expect(json.status).toBe(415);
    const nul = await fetch(path, { method: "POST", body: new URLSearchParams({ logout_token: "x\u0000" }) });
    expect(nul.status).toBe(400);
    expect(((await nul.json()) as { error: { message: string } }).error.message).toContain(
      "cannot be stored",
    );
    // A well-formed form reaches the route: this node has no identity provider, hence 404.
    const form = await fetch(path, { method: "POST", body: new URLSearchParams({ logout_token: "x" }) });
    expect(form.status).toBe(404);
  });

  test("a body sent to a route that takes none is not read, and an empty body where one is needed is 400", async () => {
    const res = await client.call("POST", "/v1/accounts", { raw: "" });
    expect(res.status).toBe(400);
    expect(res.body.error).toEqual({ code: "invalid", message: "a JSON body is required" });
    const bodyless = await fetch(`${node.url}/v1/devices/99`, {
      method: "DELETE",
      headers: {
        authorization: `Bearer ${me.accessToken}`,
        "content-type": "multipart/form-data; boundary=x",
      },
      body: "--x\r\nnot read\r\n--x--",
    });
    // The route's own answer (no such device), not a parse error.
    expect(bodyless.status).toBe(404);
  });

  test("text PostgreSQL cannot store (NUL, lone surrogates) is 400 invalid in every string, not 500", async () => {
    const before = await snapshot(node);
    const login = { username: me.username, password: me.password, registrationId: 7 };
    const cases: [string, string, unknown, string?][] = [
      // The example.
      ["POST", "/v1/sessions", { ...login, deviceName: "phone\u0000" }],
      ["POST", "/v1/sessions", { ...login, deviceName: "phone\ud800" }],
      ["POST", "/v1/groups", { name: "group\u0000", members: [] }, me.accessToken],
      ["POST", "/v1/groups", { name: "\udc00 lone low", members: [] }, me.accessToken],
      ["POST", "/v1/accounts", { username: "valid_name_nul", password: "password\u0000123" }],
      ["DELETE", "/v1/me", { password: "pass\u0000word" }, me.accessToken],
    ];
    for (const [method, path, body, token] of cases) {
      const res = await client.call(method, path, { raw: JSON.stringify(body), token });
      expect({ path, body, status: res.status, code: res.body.error?.code }).toEqual({
        path,
        body,
        status: 400,
        code: "invalid",
      });
      expect(res.body.error.message).toContain("cannot be stored");
    }
    // Escaped in the JSON text instead of raw: the same answer.
    const escaped = await client.call("POST", "/v1/sessions", {
      raw: `{"username":"${me.username}","password":"${me.password}","registrationId":7,"deviceName":"phone\\u0000"}`,
    });
    expect(escaped.status).toBe(400);
    expect(await snapshot(node)).toEqual(before);
    // The same rule for a path parameter.
    const path = await client.get("/v1/erasures/%00");
    expect(path.status).toBe(400);
    expect(path.body.error.code).toBe("invalid");
    // A surrogate pair is ordinary text.
    const emoji = await client.post("/v1/sessions", { ...login, deviceName: "phone 📱" });
    expect(emoji.status).toBe(201);
  });

  test("names with control, line-separator or bidirectional characters are 400 invalid and nothing is stored", async () => {
    const before = await snapshot(node);
    const login = { username: me.username, password: me.password, registrationId: 7 };
    // An OSC 52 clipboard write, a carriage return forging a line, a C1 CSI, a line separator, a
    // right-to-left override and a bidi isolate (Trojan Source, CVE-2021-42574).
    const names = [
      "team\u001b]52;c;ZXZpbA==\u0007",
      "ok\r[12:00] admin: hi",
      "a\u009b2J",
      "a\u2028b",
      "abc\u202edcba",
      "x\u2066y",
      // The bidirectional marks (ALM, LRM, RLM) and other invisible format characters (Cf): a
      // zero-width space, a joiner outside an emoji, a byte-order mark, a soft hyphen, a tag.
      "abc\u061cdef",
      "abc\u200edef",
      "abc\u200fdef",
      "ad\u200bmin",
      "ad\u200dmin",
      "\ufeffadmin",
      "ad\u00admin",
      "admin\u{e0041}",
    ];
    for (const name of names) {
      for (const [path, body, token] of [
        ["/v1/groups", { name, members: [] }, me.accessToken],
        ["/v1/sessions", { ...login, deviceName: name }, undefined],
      ] as const) {
        const res = await client.post(path, body, token);
        expect({ path, name, status: res.status, code: res.body.error?.code }).toEqual({
          path,
          name,
          status: 400,
          code: "invalid",
        });
        // Said in words, not as the pattern.
        expect(res.body.error.message).toContain("without control characters");
        expect(res.body.error.message).not.toContain("\\u");
      }
    }
    expect(await snapshot(node)).toEqual(before);
    // Letters of any script, emoji and a tab-free space are names like any other.
    const ok = await client.post("/v1/groups", { name: "Équipe 東京 📱 – ok", members: [] }, me.accessToken);
    expect(ok.status).toBe(201);
    // So are emoji whose joiners and tags stand where Unicode puts them (UTS #51).
    const family = await client.post("/v1/sessions", { ...login, deviceName: "👨‍👩‍👧 🏳️‍🌈 🏴󠁧󠁢󠁳󠁣󠁴󠁿" });
    expect(family.status).toBe(201);
  });

  test("no reply or log line holds a refused value", async () => {
    const marker = "refused-value-marker";
    await client.call("POST", "/v1/accounts", { raw: `{"username":"${marker}\\u0000","password":"x"}` });
    await client.call("POST", "/v1/accounts", { raw: `{"username":{"${marker}":${nestedObjects(40)}}}` });
    await client.post("/v1/groups", { name: 5, members: [marker] }, me.accessToken);
    // Path parameters are checked by Elysia: its error's summary can quote the value; ours never does.
    for (const path of [`/v1/keys/${marker}`, `/v1/groups/${marker}`, `/v1/erasures/${marker}`]) {
      const res = await client.get(path, me.accessToken);
      expect({ path, status: res.status }).toEqual({ path, status: 400 });
      expect(JSON.stringify(res.body)).not.toContain(marker);
    }
    const device = await client.delete(`/v1/devices/${marker}`, me.accessToken);
    expect(device.status).toBe(400);
    expect(JSON.stringify(device.body)).not.toContain(marker);
    expect(node.logs.join("")).not.toContain(marker);
  });
});

describe("ids are canonical at the edge", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("presence.watch with an upper-case id reports an online user as online", async () => {
    const watcher = await registerAndLogin(client);
    const watched = await registerAndLogin(client);
    await relate(client, watcher, watched);
    const online = await TestSocket.open(node.url, watched.accessToken);
    online.send({ type: "ping" });
    await online.next((f) => f.type === "pong");
    const socket = await TestSocket.open(node.url, watcher.accessToken);
    socket.send({ type: "presence.watch", users: [watched.userId.toUpperCase()] });
    const state = await socket.next((f) => f.type === "presence");
    expect(state).toMatchObject({ user: watched.userId, online: true });
    expect(state.lastSeen).toBeGreaterThan(0);
    // Going offline reaches the upper-case watcher too: one presence entry per user.
    await online.close();
    const offline = await socket.next((f) => f.type === "presence" && f.online === false);
    expect(offline.user).toBe(watched.userId);
    await socket.close();
  });

  test("a send to an upper-case recipient id is delivered, and acks in upper case are honoured", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const sender = await TestSocket.open(node.url, alice.accessToken);
    const recipient = await TestSocket.open(node.url, bob.accessToken);
    const id = crypto.randomUUID().toUpperCase();
    sender.send({
      type: "send",
      id,
      to: { user: bob.userId.toUpperCase() },
      messages: [{ deviceId: bob.deviceId, type: 3, body: Buffer.from("hi").toString("base64") }],
    });
    const accepted = await sender.next((f) => f.type === "accepted");
    expect(accepted.id).toBe(id.toLowerCase());
    const [message] = await recipient.messages(1);
    expect(message.id).toBe(id.toLowerCase());
    expect(message.from.user).toBe(alice.userId);
    recipient.send(ackFrom({ user: alice.userId.toUpperCase(), device: 1 }, [id]));
    await recipient.close();
    // Acked in upper case: nothing is redelivered on the next connection.
    const again = await TestSocket.open(node.url, bob.accessToken);
    // A redelivery would come from the queue, before a live message sent now.
    expect(await messagesBeforeMarker(sender, bob.userId, [again])).toEqual([[]]);
    await Promise.all([sender.close(), again.close()]);
  });

  test("key fetches of one user share one rate-limit counter whatever the id's case", async () => {
    const requester = await registerAndLogin(client);
    const target = await registerAndLogin(client);
    const statuses: number[] = [];
    for (let i = 0; i < 21; i++) {
      const id = i % 2 === 0 ? target.userId : target.userId.toUpperCase();
      statuses.push((await client.get(`/v1/keys/${id}`, requester.accessToken)).status);
    }
    // 20 fetches per target per device per 10 minutes: the 21st is refused, however it was spelt.
    expect(statuses.slice(0, 20).every((s) => s !== 429)).toBe(true);
    expect(statuses[20]).toBe(429);
  });

  test("a group created with the creator's own id in upper case among the members lists them once", async () => {
    const creator = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    const created = await client.post(
      "/v1/groups",
      { name: "case", members: [creator.userId.toUpperCase(), other.userId.toUpperCase(), other.userId] },
      creator.accessToken,
    );
    expect(created.status).toBe(201);
    const accepted = await client.post(
      `/v1/invitations/${created.body.groupId.toUpperCase()}/accept`,
      undefined,
      other.accessToken,
    );
    expect(accepted.status).toBe(204);
    // A second accept finds no invitation: the case variant did not make two.
    expect(
      (await client.post(`/v1/invitations/${created.body.groupId}/accept`, undefined, other.accessToken))
        .status,
    ).toBe(404);
    const group = await client.get(`/v1/groups/${created.body.groupId.toUpperCase()}`, creator.accessToken);
    expect(group.status).toBe(200);
    expect(group.body.groupId).toBe(created.body.groupId);
    expect([...group.body.members].sort()).toEqual([creator.userId, other.userId].sort());
    expect(group.body.admins).toEqual([creator.userId]);
  });
});

describe("hostile frames", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("deep nesting and unstorable text get an error naming the limit and the socket stays usable", async () => {
    const me = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const cases: [string, string][] = [
      [nestedArrays(100_000), `frame nests deeper than ${MAX_JSON_DEPTH} levels`],
      [`{"type":"ping","x":${nestedObjects(12_000)}}`, `frame nests deeper than ${MAX_JSON_DEPTH} levels`],
      ['{"type":"ping\\u0000"}', "cannot be stored"],
      ['{"type":"presence.watch","users":["\\ud800"]}', "cannot be stored"],
    ];
    for (const [frame, problem] of cases) {
      socket.send(frame);
      const error = await socket.next((f) => f.type === "error");
      expect(error.code).toBe("invalid");
      expect(error.message).toContain(problem);
      socket.send({ type: "ping" });
      await socket.next((f) => f.type === "pong");
    }
    expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
    await socket.close();
  });
});
