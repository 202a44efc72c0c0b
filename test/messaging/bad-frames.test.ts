import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

describe("WebSocket gateway against bad input", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "50" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** Still usable: a ping gets its pong. */
  async function expectUsable(socket: TestSocket) {
    socket.send({ type: "ping" });
    expect((await socket.next((f) => f.type === "pong")).type).toBe("pong");
  }

  test("the upgrade is refused with 401 for a missing, wrong or revoked token", async () => {
    for (const token of [undefined, "not-a-token"]) {
      const res = await fetch(`${node.url}/v1/ws`, {
        headers: {
          upgrade: "websocket",
          connection: "Upgrade",
          "sec-websocket-version": "13",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          ...(token ? { authorization: `Bearer ${token}` } : {}),
        },
      });
      expect(res.status).toBe(401);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unauthorized");
    }
    await expect(TestSocket.open(node.url, "garbage")).rejects.toThrow("refused");
  });

  test("a token in ?token= is accepted for browsers", async () => {
    const me = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken, { viaQuery: true });
    await expectUsable(socket);
    await socket.close();
  });

  test("malformed frames get an error or a rejection and the socket stays usable", async () => {
    const me = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const cases: [unknown, string][] = [
      ["not json at all", "error"],
      ["[1,2,3]", "error"],
      ['"a string"', "error"],
      ["null", "error"],
      [{ type: "no-such-type" }, "error"],
      [{ type: "ack" }, "error"],
      // The ids-only form: an id alone does not name a message (another sender may use it).
      [{ type: "ack", ids: [randomUUID()] }, "error"],
      [{ type: "ack", messages: [] }, "error"],
      [{ type: "ack", messages: [{ id: "not-a-uuid", from: { user: randomUUID(), device: 1 } }] }, "error"],
      [{ type: "ack", messages: [{ id: randomUUID() }] }, "error"],
      [{ type: "ack", messages: [{ id: randomUUID(), from: { user: "me", device: 1 } }] }, "error"],
      [{ type: "ack", messages: [{ id: randomUUID(), from: { user: randomUUID(), device: 0 } }] }, "error"],
      [{ type: "ack", messages: [{ id: randomUUID(), from: { user: randomUUID(), device: 1.5 } }] }, "error"],
      [
        { type: "ack", messages: [{ id: randomUUID(), from: { user: randomUUID(), device: 1, x: 1 } }] },
        "error",
      ],
      [
        {
          type: "ack",
          messages: Array.from({ length: 1001 }, () => ({
            id: randomUUID(),
            from: { user: randomUUID(), device: 1 },
          })),
        },
        "error",
      ],
      [{ type: "presence.watch", users: "everyone" }, "error"],
      [{ type: "ping", extra: true }, "error"],
      [{ type: "send" }, "error"],
      [{ type: "send", id: randomUUID(), to: { user: "bob" }, messages: [] }, "rejected"],
      [
        {
          type: "send",
          id: randomUUID(),
          to: { user: randomUUID() },
          messages: [{ deviceId: 0, type: 3, body: b64("x") }],
        },
        "rejected",
      ],
      [
        {
          type: "send",
          id: randomUUID(),
          to: { user: randomUUID() },
          messages: [{ deviceId: 1, type: 9, body: b64("x") }],
        },
        "rejected",
      ],
      [
        {
          type: "send",
          id: randomUUID(),
          to: { user: randomUUID() },
          messages: [{ deviceId: 1, type: 3, body: "%%%not base64" }],
        },
        "rejected",
      ],
      [
        { type: "send", id: randomUUID(), to: { group: randomUUID() }, message: { type: 3, body: b64("x") } },
        "rejected",
      ],
      [
        { type: "send", id: randomUUID(), to: { user: randomUUID(), group: randomUUID() }, messages: [] },
        "rejected",
      ],
    ];
    for (const [frame, expected] of cases) {
      socket.send(frame);
      const reply = await socket.next((f) => f.type === "error" || f.type === "rejected");
      expect({ frame, type: reply.type }).toEqual({ frame, type: expected });
      expect(reply.code).toBe("invalid");
      if (expected === "rejected") expect(reply.id).toBe((frame as { id: string }).id);
    }
    await expectUsable(socket);
    await socket.close();
  });

  test("a duplicate device id in one send is rejected as invalid and stores nothing", async () => {
    const me = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const id = randomUUID();
    const message = { deviceId: 1, type: 3, body: b64("x") };
    socket.send({ type: "send", id, to: { user: bob.userId }, messages: [message, message] });
    expect(await socket.reply(id)).toMatchObject({ type: "rejected", code: "invalid" });
    expect(await node.log.metadataOf(bob.userId)).toEqual([]);
    await socket.close();
  });

  test("a frame over 256 KiB is refused with too_large and the socket stays usable", async () => {
    const me = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const id = randomUUID();
    const body = Buffer.alloc(300 * 1024, 7).toString("base64");
    socket.send({ type: "send", id, to: { user: bob.userId }, messages: [{ deviceId: 1, type: 3, body }] });
    const reply = await socket.next((f) => f.type === "error");
    expect(reply.code).toBe("too_large");
    await expectUsable(socket);
    expect(await node.log.metadataOf(bob.userId)).toEqual([]);
    await socket.close();
  });

  test("a flood of frames is rate-limited and the node keeps serving others", async () => {
    const me = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    const flooder = await TestSocket.open(node.url, me.accessToken);
    // Far past the burst (100) plus what 50/s refills while a loaded server reads them.
    for (let i = 0; i < 3000; i++) flooder.send({ type: "ping" });
    const limited = await flooder.next((f) => f.type === "error" && f.code === "rate_limited");
    expect(limited.message).toContain("slow down");
    const bystander = await TestSocket.open(node.url, other.accessToken);
    await expectUsable(bystander);
    expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
    await Promise.all([flooder.close(), bystander.close()]);
  });

  test("a flood of sends gets rate_limited rejections naming each refused id", async () => {
    // A node of its own with a tiny budget (2 frames/s, bursts of 4): however slowly a loaded
    // machine reads the 300 frames, far more arrive than the budget refills.
    const strict = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "2" } });
    try {
      const strictClient = api(strict.url);
      const me = await registerAndLogin(strictClient);
      const bob = await registerAndLogin(strictClient);
      const socket = await TestSocket.open(strict.url, me.accessToken);
      const ids = Array.from({ length: 300 }, () => randomUUID());
      for (const id of ids) {
        socket.send({
          type: "send",
          id,
          to: { user: bob.userId },
          messages: [{ deviceId: 1, type: 3, body: b64("x") }],
        });
      }
      const replies = await Promise.all(ids.map((id) => socket.reply(id, 15_000)));
      const limited = replies.filter((r) => r.type === "rejected" && r.code === "rate_limited");
      expect(limited.length).toBeGreaterThan(0);
      expect(replies.filter((r) => r.type === "accepted").length).toBeGreaterThan(0);
      await socket.close();
    } finally {
      await strict.teardown();
    }
  });
});

describe("the frame budget is spent before a frame is read", () => {
  /** The answers to the next `count` frames (each frame gets one: a pong or an error), in order. */
  async function answers(socket: TestSocket, count: number) {
    const seen: string[] = [];
    for (let i = 0; i < count; i++) {
      const f = await socket.next((f) => f.type === "pong" || f.type === "error");
      seen.push(f.type === "pong" ? "pong" : String(f.code));
    }
    return seen;
  }

  test("unparseable frames spend tokens: a flood of them is answered rate_limited, not parsed", async () => {
    // 1 frame/s, bursts of 2: however slowly a loaded machine reads 40 frames, most are over budget.
    const strict = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "1" } });
    try {
      const me = await registerAndLogin(api(strict.url));
      const socket = await TestSocket.open(strict.url, me.accessToken);
      const garbage = `{${"x".repeat(200 * 1024)}`;
      for (let i = 0; i < 40; i++) socket.send(garbage);
      const seen = await answers(socket, 40);
      expect(seen[0]).toBe("invalid");
      expect(seen.filter((code) => code === "rate_limited").length).toBeGreaterThan(20);
      await socket.close();
    } finally {
      await strict.teardown();
    }
  });

  test("a frame costs a token per 16 KiB, never more than the burst", async () => {
    // 20 frames/s, bursts of 40: 40 pings fit the burst at one token each, but not at 13.
    const node = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "20" } });
    const tiny = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "1" } });
    try {
      const me = await registerAndLogin(api(node.url));
      const socket = await TestSocket.open(node.url, me.accessToken);
      // Whitespace after the value is valid JSON: a ping of 200 KiB.
      const bigPing = `{"type":"ping"}${" ".repeat(200 * 1024)}`;
      for (let i = 0; i < 40; i++) socket.send(bigPing);
      const seen = await answers(socket, 40);
      expect(seen.filter((code) => code === "rate_limited").length).toBeGreaterThan(10);
      expect(seen.filter((code) => code !== "pong" && code !== "rate_limited")).toEqual([]);
      await socket.close();

      // A budget of 2 tokens still lets a rested socket send a 200 KiB frame (it costs the burst).
      const you = await registerAndLogin(api(tiny.url));
      const small = await TestSocket.open(tiny.url, you.accessToken);
      small.send(bigPing);
      expect(await answers(small, 1)).toEqual(["pong"]);
      await small.close();
    } finally {
      await Promise.all([node.teardown(), tiny.teardown()]);
    }
  });
});
