import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import amqp from "amqplib";
import { Redis } from "ioredis";
import type { AmqpOfflineQueue } from "../../src/messaging/amqp-offline-queue.ts";
import { AMQP_URL, REDIS_URL, runPrefix, STACKS, type Stack, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { ackOf, type Frame, TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

type Person = Awaited<ReturnType<typeof registerAndLogin>>;

async function waitFor<T>(check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(50);
  }
}

/** The erasure's finished answer (`GET /v1/erasures/:id` with status done). */
function whenDone(node: TestNode, erasureId: string) {
  return waitFor(async () => {
    const res = await api(node.url).get(`/v1/erasures/${erasureId}`);
    return res.body.status === "done" ? res.body : undefined;
  });
}

function sendFrame(to: Person, text: string) {
  const id = randomUUID();
  return {
    id,
    frame: {
      type: "send",
      id,
      to: { user: to.userId },
      messages: [{ deviceId: to.deviceId, type: 3, body: b64(text) }],
    },
  };
}

/**
 * Nothing of `userId` anywhere: the envelope log (PostgreSQL, or the embedded SQLite log), and on
 * the services stack RabbitMQ (the user's device queue does not exist) and Redis (no key, no value
 * names the user).
 */
async function expectNothingOf(node: TestNode, stack: Stack, prefix: string, user: Person): Promise<void> {
  expect(await node.log.metadataOf(user.userId)).toEqual([]);
  expect(await node.log.undelivered(user.userId)).toEqual([]);
  expect(await node.presence.sockets(user.userId)).toEqual([]);
  if (stack !== "services") return;
  const connection = await amqp.connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    channel.on("error", () => {});
    const name = (node.offline as AmqpOfflineQueue).queueName(user.userId, user.deviceId);
    const missing = await channel.checkQueue(name).then(
      () => false,
      (error: { code?: number }) => error.code === 404,
    );
    expect(missing).toBe(true);
  } finally {
    await connection.close().catch(() => {});
  }
  const redis = new Redis(REDIS_URL);
  try {
    const keys = await redis.keys(`${prefix}:*`);
    expect(keys.filter((k) => k.includes(user.userId))).toEqual([]);
    const values = await Promise.all(keys.map(async (k) => `${k} ${JSON.stringify(await redis.dump(k))}`));
    expect(values.join("\n")).not.toContain(user.userId);
  } finally {
    await redis.quit();
  }
}

/** Every reply must be `accepted`, or `rejected` as if the recipient did not exist. */
function expectAcceptedOrGone(replies: Frame[]): void {
  for (const reply of replies) {
    if (reply.type === "accepted") continue;
    expect(reply).toMatchObject({ type: "rejected", code: "unknown_recipient" });
  }
}

describe.each(STACKS)("the erasure fence on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: { ...stackEnv(stack, prefix), DEVICE_RATE_LIMIT: "100000" } });
  });
  afterAll(() => node?.teardown());

  test("B sends 15 messages to A while A's erasure starts: nothing from or to A remains (10 runs)", async () => {
    const http = api(node.url);
    for (let run = 0; run < 10; run++) {
      const a = await registerAndLogin(http);
      const b = await registerAndLogin(http);
      const bSocket = await TestSocket.open(node.url, b.accessToken);
      // One accepted before the erasure: there is something of A's to sweep in every run.
      const first = sendFrame(a, "before");
      bSocket.send(first.frame);
      expect((await bSocket.reply(first.id, 30_000)).type).toBe("accepted");

      const erasing = http.call("DELETE", "/v1/me", { token: a.accessToken, body: { password: a.password } });
      const ids: string[] = [];
      // Spread over a few hundred ms, a little differently each run, to land on every step.
      for (let i = 0; i < 15; i++) {
        const { id, frame } = sendFrame(a, `race ${run}.${i}`);
        bSocket.send(frame);
        ids.push(id);
        await Bun.sleep(5 + ((run * 7 + i * 3) % 25));
      }
      const started = await erasing;
      expect(started.status).toBe(202);
      const replies = await Promise.all(ids.map((id) => bSocket.reply(id, 30_000)));
      expectAcceptedOrGone(replies);
      const done = await whenDone(node, started.body.erasureId);
      expect(done.receipt.payload.stores.fence.what).toContain("fenced");
      // Once the fence is up, a send to A is refused.
      const late = sendFrame(a, "late");
      bSocket.send(late.frame);
      expect(await bSocket.reply(late.id, 30_000)).toMatchObject({
        type: "rejected",
        code: "unknown_recipient",
      });
      await bSocket.close();
      await expectNothingOf(node, stack, prefix, a);
    }
  });

  test("the fence refuses A's sign-in, key fetches and group adds while B still can", async () => {
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    const started = await fetch(`${node.adminUrl}/admin/v1/users/${a.userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(started.status).toBe(202);
    // Refused from the moment the erasure is started, whatever step it is at.
    const [login, keys, group, ws] = await Promise.all([
      http.post("/v1/sessions", { username: a.username, password: a.password, registrationId: 1 }),
      http.get(`/v1/keys/${a.userId}`, b.accessToken),
      http.post("/v1/groups", { name: "with a", members: [a.userId] }, b.accessToken),
      TestSocket.open(node.url, a.accessToken).then(
        async (s) => (await s.whenClosed(10_000)).code,
        () => 401,
      ),
    ]);
    expect(login.status).toBe(401);
    expect(keys.status).toBe(404);
    expect(group.status).toBe(404);
    expect([401, 4410]).toContain(ws);
    await whenDone(node, ((await started.json()) as { erasureId: string }).erasureId);
    expect((await http.post("/v1/groups", { name: "without a", members: [] }, b.accessToken)).status).toBe(
      201,
    );
    // After the sweep: refusals write nothing that names A (a key fetch's per-target rate-limit
    // counter is keyed by the target; a presence watch of A).
    expect((await http.get(`/v1/keys/${a.userId}`, b.accessToken)).status).toBe(404);
    const watcher = await TestSocket.open(node.url, b.accessToken);
    watcher.send({ type: "presence.watch", users: [a.userId] });
    await watcher.next((f) => f.type === "presence" && f.user === a.userId, 5_000).catch(() => undefined);
    await watcher.close();
    await expectNothingOf(node, stack, prefix, a);
  });

  test("B received A's message and did not ack it; A is erased; B reconnects and does not get it again", async () => {
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    const c = await registerAndLogin(http);
    const bSocket = await TestSocket.open(node.url, b.accessToken);
    const aSocket = await TestSocket.open(node.url, a.accessToken);
    const fromA = sendFrame(b, "from a, never acked");
    aSocket.send(fromA.frame);
    expect((await aSocket.reply(fromA.id, 30_000)).type).toBe("accepted");
    expect((await bSocket.messages(1, 30_000))[0].id).toBe(fromA.id);

    const started = await http.call("DELETE", "/v1/me", {
      token: a.accessToken,
      body: { password: a.password },
    });
    expect(started.status).toBe(202);
    const done = await whenDone(node, started.body.erasureId);
    expect(done.receipt.payload.stores.fence.removed).toBeGreaterThanOrEqual(1);
    await bSocket.close();

    await expectRedeliveryIsOnly(b, c, fromA.id);
    await expectNothingOf(node, stack, prefix, a);
  });

  test("B drained A's queued message and did not ack it; A is erased; B reconnects and does not get it again", async () => {
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    const c = await registerAndLogin(http);
    const aSocket = await TestSocket.open(node.url, a.accessToken);
    // B is offline: A's message goes to B's offline queue.
    const fromA = sendFrame(b, "from a, queued");
    aSocket.send(fromA.frame);
    expect((await aSocket.reply(fromA.id, 30_000)).type).toBe("accepted");
    await waitFor(async () => ((await node.offline.depth(b.userId, b.deviceId)) >= 1 ? true : undefined));
    // B connects: the drain hands it over, B does not ack.
    const bSocket = await TestSocket.open(node.url, b.accessToken);
    expect((await bSocket.messages(1, 30_000))[0].id).toBe(fromA.id);

    const started = await http.call("DELETE", "/v1/me", {
      token: a.accessToken,
      body: { password: a.password },
    });
    expect(started.status).toBe(202);
    const done = await whenDone(node, started.body.erasureId);
    const stores = done.receipt.payload.stores;
    expect(
      stores.fence.removed + stores.others_queues.removed + stores.history.removed,
    ).toBeGreaterThanOrEqual(1);
    await bSocket.close();

    await expectRedeliveryIsOnly(b, c, fromA.id);
    await expectNothingOf(node, stack, prefix, a);
  });

  /**
   * B reconnects; C sends B a marker, which comes after anything queued or held for B (the queue is
   * drained before live delivery): B must have got the marker and not `erasedId`.
   */
  async function expectRedeliveryIsOnly(b: Person, c: Person, erasedId: string): Promise<void> {
    const bAgain = await TestSocket.open(node.url, b.accessToken);
    const cSocket = await TestSocket.open(node.url, c.accessToken);
    const marker = sendFrame(b, "marker");
    cSocket.send(marker.frame);
    expect((await cSocket.reply(marker.id, 30_000)).type).toBe("accepted");
    const seen: string[] = [];
    for (;;) {
      const [message] = await bAgain.messages(1, 30_000);
      seen.push(message.id);
      bAgain.send(ackOf([message]));
      if (message.id === marker.id) break;
    }
    expect(seen).not.toContain(erasedId);
    await Promise.all([bAgain.close(), cSocket.close()]);
  }
});

describe("the erasure fence across three nodes on PostgreSQL, Redis and RabbitMQ", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  const nodes: TestNode[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
      DEVICE_RATE_LIMIT: "100000",
    };
    for (const name of ["fence-1", "fence-2", "fence-3"]) {
      nodes.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: name } }));
    }
    await waitFor(async () => (nodes.every((n) => n.actors.ringMembers().length === 3) ? true : undefined));
  });
  afterAll(async () => {
    for (const node of nodes) await node.teardown();
    await database?.drop();
  });

  test("erasure handled by node 1, A's actor on node 2, B sending from node 3: nothing of A anywhere (5 runs)", async () => {
    const [one, two, three] = nodes;
    const http = api(one.url);
    for (let run = 0; run < 5; run++) {
      let a: Person | undefined;
      for (let i = 0; i < 60 && !a; i++) {
        const candidate = await registerAndLogin(http);
        if (one.actors.ownerOf(`user:${candidate.userId}`) === "fence-2") a = candidate;
      }
      if (!a) throw new Error("no user landed on fence-2");
      const b = await registerAndLogin(http);
      const bSocket = await TestSocket.open(three.url, b.accessToken);
      const first = sendFrame(a, "before");
      bSocket.send(first.frame);
      expect((await bSocket.reply(first.id, 30_000)).type).toBe("accepted");
      await waitFor(async () => (two.actors.isActive(`user:${a.userId}`) ? true : undefined));

      const erasing = fetch(`${one.adminUrl}/admin/v1/users/${a.userId}/erase`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const ids: string[] = [];
      for (let i = 0; i < 15; i++) {
        const { id, frame } = sendFrame(a, `race ${run}.${i}`);
        bSocket.send(frame);
        ids.push(id);
        await Bun.sleep(5 + ((run * 11 + i * 3) % 25));
      }
      const started = await erasing;
      expect(started.status).toBe(202);
      const { erasureId } = (await started.json()) as { erasureId: string };
      expectAcceptedOrGone(await Promise.all(ids.map((id) => bSocket.reply(id, 30_000))));
      const done = await whenDone(one, erasureId);
      expect(done.receipt.payload.stores.fence.what).toContain("on 3 node(s)");
      await bSocket.close();
      for (const node of nodes) expect(node.actors.isActive(`user:${a.userId}`)).toBe(false);
      await expectNothingOf(one, "services", prefix, a);
    }
  });
});
