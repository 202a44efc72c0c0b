import { afterAll, beforeAll, expect, test } from "bun:test";
import { REDIS_URL, runPrefix } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { socketState, startTestNode, type TestNode } from "../support/node.ts";
import { OwnRabbitMq } from "../support/own-rabbitmq.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { ackOf, TestSocket, waitUntil } from "../support/ws.ts";

// The link to RabbitMQ stalls (held, never closed) while a recipient is offline and messages
// queue for it: every send is answered meanwhile, and once the link flows every accepted message
// reaches the recipient once and in order. The broker is the test's own, behind a TCP proxy;
// PostgreSQL and Redis are the shared ones (a database and a prefix of this run).
let broker: OwnRabbitMq;
let proxy: TcpProxy;
let database: TestDatabase;
let node: TestNode;

beforeAll(async () => {
  [broker, database] = await Promise.all([OwnRabbitMq.start(), createTestDatabase()]);
  proxy = await startTcpProxy(broker.url);
  const amqpUrl = new URL(broker.url);
  amqpUrl.port = String(proxy.port);
  const prefix = runPrefix();
  node = await startTestNode("postgres", {
    database,
    env: {
      REDIS_URL,
      AMQP_URL: amqpUrl.toString(),
      REDIS_PREFIX: `${prefix}:`,
      CLUSTER_HEARTBEAT_MS: "250",
      PRESENCE_LEASE_SECONDS: "3",
    },
  });
}, 120_000);

afterAll(async () => {
  proxy?.stall(false);
  await node?.teardown().catch(() => {});
  await proxy?.close();
  await broker?.destroy();
  await database?.drop();
});

test("RabbitMQ link stalled while a recipient is offline: every send answered; accepted ones arrive once, in order", async () => {
  const http = api(node.url);
  const alice = await registerAndLogin(http);
  const bob = await registerAndLogin(http);
  const socket = await TestSocket.open(node.url, alice.accessToken);
  await waitUntil(() => socketState(node, alice.userId) === "live", "alice's socket to be live");
  const body = (text: string) => Buffer.from(text).toString("base64");
  const send = async (id: string, text: string): Promise<string> => {
    socket.send({
      type: "send",
      id,
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body: body(text) }],
    });
    const frame = await Promise.race([
      socket.next((f) => f.id === id && f.type !== "message", 60_000),
      Bun.sleep(60_000).then(() => ({ type: "hung" })),
    ]);
    return frame.type;
  };
  const ids = Array.from({ length: 6 }, () => crypto.randomUUID());
  expect(await send(ids[0] as string, "m0")).toBe("accepted");
  proxy.stall(true);
  const during: string[] = [];
  let inbox: TestSocket | undefined;
  try {
    for (let i = 1; i < 6; i++) during.push(await send(ids[i] as string, `m${i}`));
    // The recipient comes online while the link is still held, past the heartbeat timeout (10 s,
    // twice): its drain of the queue starts on a broker that does not answer.
    inbox = await TestSocket.open(node.url, bob.accessToken);
    await Bun.sleep(25_000);
  } finally {
    proxy.stall(false);
  }
  expect(during).not.toContain("hung");
  // The ones not accepted are sent again (same id) until they are.
  for (let i = 1; i < 6; i++) {
    let answer = during[i - 1];
    const until = Date.now() + 60_000;
    while (answer !== "accepted" && Date.now() < until) {
      await Bun.sleep(200);
      answer = await send(ids[i] as string, `m${i}`);
    }
    expect(answer).toBe("accepted");
  }
  if (inbox.closed) inbox = await TestSocket.open(node.url, bob.accessToken);
  const got = await inbox.messages(6, 60_000);
  expect(got.map((m) => m.id)).toEqual(ids);
  inbox.send(ackOf(got));
  await Bun.sleep(500);
  expect(inbox.pendingMessages().map((m) => m.id)).toEqual([]);
  await inbox.close();
  await socket.close();
}, 240_000);
