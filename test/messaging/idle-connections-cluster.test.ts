import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { expectEachOnce } from "../support/exactly-once.ts";
import { api, registerAndLogin, type SessionBody } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");
const direct = (id: string, to: string, text: string) => ({
  type: "send",
  id,
  to: { user: to },
  messages: [{ deviceId: 1, type: 3, body: b64(text) }],
});

/**
 * A socket's connect, drain and disconnect reach its user actor only if one is active (`askIfActive`),
 * so recipients whose actors are activated by a deliver while their socket opens or drains on
 * another node are the case to get right: the activation must either read the socket `live` or get
 * its `device.drained` (a version that lost that notice delivered 0 of 8,000 in the cluster load test).
 */
describe("idle connections across three nodes on PostgreSQL, Redis and RabbitMQ", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let nodes: TestNode[] = [];
  let senders: { session: SessionBody; socket: TestSocket }[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
      DEVICE_RATE_LIMIT: "100000",
    };
    nodes = [];
    for (const id of ["idle-1", "idle-2", "idle-3"]) {
      nodes.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: id } }));
    }
    const until = Date.now() + 15_000;
    while (nodes.some((n) => n.actors.ringMembers().length < 3)) {
      if (Date.now() > until) throw new Error("the three nodes never saw each other");
      await Bun.sleep(50);
    }
    senders = await Promise.all(
      nodes.map(async (node) => {
        const session = await registerAndLogin(api(node.url));
        return { session, socket: await TestSocket.open(node.url, session.accessToken) };
      }),
    );
  });
  afterAll(async () => {
    for (const { socket } of senders) await socket.close().catch(() => {});
    for (const node of nodes) await node.teardown();
    await database?.drop();
  });

  /** Sends `count` messages from sender `from` to `to`, `gapMs` apart; returns their ids once all are accepted. */
  async function sendSome(from: number, to: string, count: number, gapMs: number): Promise<string[]> {
    const { socket } = senders[from];
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const id = randomUUID();
      ids.push(id);
      socket.send(direct(id, to, `message ${i}`));
      if (gapMs > 0) await Bun.sleep(gapMs);
    }
    for (const id of ids) expect((await socket.reply(id, 20_000)).type).toBe("accepted");
    return ids;
  }

  test("recipients connecting while messages arrive from other nodes get every accepted message exactly once", async () => {
    const recipients = await Promise.all(
      Array.from({ length: 45 }, (_, i) => registerAndLogin(api(nodes[i % 3].url))),
    );
    const accepted = new Map<string, string[]>();
    // A third have a backlog in their offline queue first (their actor is then active and their
    // drain takes longer); the others connect with no actor at all.
    await Promise.all(
      recipients.map(async (r, i) => {
        if (i % 3 === 0) accepted.set(r.userId, await sendSome((i + 1) % 3, r.userId, 20, 0));
      }),
    );
    const sockets = await Promise.all(
      recipients.map(async (r, i) => {
        const opening = TestSocket.open(nodes[i % 3].url, r.accessToken);
        // One burst as the socket opens, then a trickle that spans its drain and its going live.
        const burst = sendSome((i + 1) % 3, r.userId, 4, 0);
        const trickle = sendSome((i + 2) % 3, r.userId, 6, 15);
        const socket = await opening;
        const ids = [...(accepted.get(r.userId) ?? []), ...(await burst), ...(await trickle)];
        accepted.set(r.userId, ids);
        return socket;
      }),
    );
    await expectEachOnce(recipients, sockets, accepted);
    await Promise.all(sockets.map((s) => s.close()));
  }, 120_000);

  test("a device reconnecting to another node while messages arrive loses none of them", async () => {
    const recipients = await Promise.all(
      Array.from({ length: 24 }, (_, i) => registerAndLogin(api(nodes[i % 3].url))),
    );
    const first = await Promise.all(
      recipients.map((r, i) => TestSocket.open(nodes[i % 3].url, r.accessToken)),
    );
    const results = await Promise.all(
      recipients.map(async (r, i) => {
        const trickle = sendSome((i + 2) % 3, r.userId, 10, 10);
        await Bun.sleep(40);
        // The new socket replaces the old one, which is still open on the other node.
        const second = await TestSocket.open(nodes[(i + 1) % 3].url, r.accessToken);
        return { second, ids: await trickle };
      }),
    );
    for (const [i, { second, ids }] of results.entries()) {
      await first[i].whenClosed(15_000);
      const onFirst = new Set(first[i].pendingMessages().map((f) => f.id));
      // What the first socket got unacked may come again on the second; nothing may be missing.
      const missing = () => ids.filter((id) => !onFirst.has(id) && !second.frames.some((f) => f.id === id));
      const deadline = Date.now() + 30_000;
      while (missing().length > 0 && Date.now() < deadline) await Bun.sleep(20);
      expect(missing()).toEqual([]);
      const onSecond = second.pendingMessages().map((f) => f.id);
      expect(new Set(onSecond).size).toBe(onSecond.length);
    }
    await Promise.all(results.map(({ second }) => second.close()));
  }, 120_000);
});
