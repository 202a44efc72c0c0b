import { afterAll, beforeAll, expect, test } from "bun:test";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { OwnPostgres } from "../support/own-postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { answered, sendAnswer, TestSocket, waitUntil } from "../support/ws.ts";

// The link to PostgreSQL stalls instead of closing (a hung server, a link dropping every packet
// while the kernel still acknowledges): the node's pool must notice, answer with an error instead
// of holding requests for good, and serve again on fresh connections. The PostgreSQL server is the
// test's own, behind a TCP proxy that silences or stalls its connections; the rest is embedded.
let pg: OwnPostgres;
let proxy: TcpProxy;
let node: TestNode;

beforeAll(async () => {
  pg = await OwnPostgres.start();
  const direct = await pg.createDatabase("clearbox_stall");
  proxy = await startTcpProxy(direct);
  const url = new URL(direct);
  url.port = String(proxy.port);
  node = await startTestNode("postgres", {
    database: { url: url.toString(), drop: async () => {} },
    env: { DATABASE_STALL_TIMEOUT_SECONDS: "2" },
  });
});

afterAll(async () => {
  await node?.teardown().catch(() => {});
  await proxy?.close();
  await pg?.stop();
});

test("connections gone silent: sends, logins and key fetches are answered, then served on fresh connections", async () => {
  const http = api(node.url);
  const alice = await registerAndLogin(http);
  const bob = await registerAndLogin(http);
  const socket = await TestSocket.open(node.url, alice.accessToken);
  expect(await sendAnswer(socket, bob.userId, "before")).toBe("accepted");
  // Every connection of the pool open (10, the default), so each request below finds a silent one.
  await Promise.all(Array.from({ length: 30 }, () => http.get("/v1/keys/count", alice.accessToken)));

  // Every connection the pool holds now goes silent for good; new ones work.
  proxy.blackHole();
  const [keys, login, send] = await Promise.all([
    answered(http.get(`/v1/keys/${bob.userId}`, alice.accessToken).then((r) => r.status)),
    answered(
      http
        .post("/v1/sessions", { username: bob.username, password: bob.password, deviceId: bob.deviceId })
        .then((r) => r.status),
    ),
    sendAnswer(socket, bob.userId, "during"),
  ]);
  expect([keys, login, send]).not.toContain("hung");

  // The pool replaced the silent connections: everything is served again.
  let last = "";
  await waitUntil(
    async () => {
      const fetched = await http.get(`/v1/keys/${bob.userId}`, alice.accessToken);
      const relog = await http.post("/v1/sessions", {
        username: bob.username,
        password: bob.password,
        deviceId: bob.deviceId,
      });
      const sent = await sendAnswer(socket, bob.userId, "after");
      last = `${fetched.status} ${relog.status} ${sent}`;
      return last === "200 201 accepted";
    },
    () => `requests served again (last: ${last})`,
    60_000,
  );
  await socket.close();
}, 180_000);

test("the whole link stalled: /readyz says the database is unavailable, requests are answered; served again once it flows", async () => {
  const http = api(node.url);
  const alice = await registerAndLogin(http);
  // Every connection of the pool open (10, the default): a request finds one already logged in,
  // not a new one whose start-up the connect timeout would end.
  await Promise.all(Array.from({ length: 30 }, () => http.get("/v1/keys/count", alice.accessToken)));
  proxy.stall(true);
  try {
    await waitUntil(
      async () => (await fetch(`${node.url}/readyz`)).status === 503,
      "/readyz to report the stall",
      60_000,
    );
    const body = (await (await fetch(`${node.url}/readyz`)).json()) as { services: Record<string, string> };
    expect(body.services.postgres).toBe("unavailable");
    const keys = await answered(http.get("/v1/keys/count", alice.accessToken).then((r) => r.status));
    expect(keys).not.toBe("hung");
    expect(keys).toBeGreaterThanOrEqual(500);
  } finally {
    proxy.stall(false);
  }
  await waitUntil(
    async () => (await fetch(`${node.url}/readyz`)).status === 200,
    "/readyz to report the database back",
    60_000,
  );
  await waitUntil(
    async () => (await http.get("/v1/keys/count", alice.accessToken)).status === 200,
    "requests served again",
    60_000,
  );
}, 180_000);
