import { afterAll, beforeAll, expect, test } from "bun:test";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { socketState, startTestNode, type TestNode } from "../support/node.ts";
import { OwnRedis } from "../support/own-redis.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { answered, sendAnswer, TestSocket, waitUntil } from "../support/ws.ts";

// The link to Redis stalls instead of closing (a hung server, a link dropping every packet while
// the kernel still acknowledges): logins (rate limits), sends (presence) and upgrades must be
// answered, not held for as long as the stall lasts. The Redis server is the test's own, behind a
// TCP proxy; PostgreSQL and RabbitMQ are the shared ones (a database and a prefix of this run).
let redis: OwnRedis;
let proxy: TcpProxy;
let database: TestDatabase;
let node: TestNode;

beforeAll(async () => {
  redis = await OwnRedis.start();
  proxy = await startTcpProxy(redis.url);
  database = await createTestDatabase();
  node = await startTestNode("postgres", {
    database,
    env: { ...stackEnv("services", runPrefix()), REDIS_URL: proxy.url },
  });
});

afterAll(async () => {
  proxy?.stall(false);
  await node?.teardown().catch(() => {});
  await proxy?.close();
  await redis?.stop();
  await database?.drop();
});

test("Redis stalled: logins, sends and upgrades are answered meanwhile; everything is served once it flows", async () => {
  const http = api(node.url);
  const alice = await registerAndLogin(http);
  const bob = await registerAndLogin(http);
  const socket = await TestSocket.open(node.url, alice.accessToken);
  expect(await sendAnswer(socket, bob.userId, "before")).toBe("accepted");
  // Online (its lease written, its queue drained): a socket still coming online when Redis stops
  // answering is closed 1011 (reconnect), as it should be, and would not carry the sends below.
  await waitUntil(() => socketState(node, alice.userId) === "live", "alice's socket to be live");

  proxy.stall(true);
  try {
    const login = answered(
      http
        .post("/v1/sessions", { username: bob.username, password: bob.password, deviceId: bob.deviceId })
        .then((r) => r.status),
    );
    const upgrade = answered(
      TestSocket.open(node.url, bob.accessToken).then(
        async (opened) => {
          await opened.close();
          return "opened";
        },
        () => "refused",
      ),
    );
    const sent = sendAnswer(socket, bob.userId, "during");
    const outcomes = { login: await login, upgrade: await upgrade, sent: await sent };
    expect(Object.entries(outcomes).filter(([, outcome]) => outcome === "hung")).toEqual([]);
  } finally {
    proxy.stall(false);
  }

  let last = "";
  await waitUntil(
    async () => {
      const relog = await http.post("/v1/sessions", {
        username: bob.username,
        password: bob.password,
        deviceId: bob.deviceId,
      });
      last = `${relog.status} ${await sendAnswer(socket, bob.userId, "after")}`;
      return last === "201 accepted";
    },
    () => `requests served again (last: ${last})`,
    60_000,
  );
  await socket.close();
}, 180_000);

test("Redis connections gone silent for good: the node reconnects and serves logins and sends again", async () => {
  const http = api(node.url);
  const alice = await registerAndLogin(http);
  const bob = await registerAndLogin(http);
  const socket = await TestSocket.open(node.url, alice.accessToken);
  expect(await sendAnswer(socket, bob.userId, "before")).toBe("accepted");
  // Online (its lease written, its queue drained): a socket still coming online when Redis stops
  // answering is closed 1011 (reconnect), as it should be, and would not carry the sends below.
  await waitUntil(() => socketState(node, alice.userId) === "live", "alice's socket to be live");

  // Every Redis connection the node holds now goes silent; new ones work.
  proxy.blackHole();
  let last = "";
  await waitUntil(
    async () => {
      const relog = await answered(
        http
          .post("/v1/sessions", { username: bob.username, password: bob.password, deviceId: bob.deviceId })
          .then((r) => r.status),
      );
      last = `${relog} ${await sendAnswer(socket, bob.userId, "after")}`;
      return last === "201 accepted";
    },
    () => `requests served again (last: ${last})`,
    60_000,
  );
  expect(node.actors.ringMembers().length).toBe(1);
  await socket.close();
}, 180_000);
