import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClearBoxClient } from "../../src/client/index.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { takenFirst } from "../support/free-port.ts";
import { uniqueUsername } from "../support/http.ts";
import { findNginx, startNginx, type TestProxy } from "../support/nginx.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { createTestPki, handshake, type TestPki } from "../support/tls.ts";

const nginx = findNginx();
if (!nginx) {
  console.warn(
    "test/deploy/nginx.test.ts: SKIPPED, nginx is not installed (apt-get install -y nginx-light; .ci/run installs it)",
  );
}

const password = "correct horse battery";
const hostPort = (url: string) => new URL(url).host;

/** Waits until `check` holds, polling every 20 ms for at most `ms`. */
async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

describe.skipIf(!nginx)("deploy/nginx/clearbox.conf in front of two ClearBox nodes (services stack)", () => {
  const prefix = runPrefix();
  let pki: TestPki;
  let database: TestDatabase;
  let a: TestNode;
  let b: TestNode;
  let bStopped = false;
  let proxy: TestProxy;
  let dir: string;

  beforeAll(async () => {
    pki = createTestPki();
    dir = mkdtempSync(join(tmpdir(), "clearbox-proxy-client-"));
    database = await createTestDatabase();
    const env = stackEnv("services", prefix);
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-a` } });
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-b` } });
    await until(
      () => a.actors.ringMembers().length === 2 && b.actors.ringMembers().length === 2,
      10_000,
      "the two nodes to see each other",
    );
    proxy = await startNginx({
      nginx: nginx as string,
      upstreams: [hostPort(a.url), hostPort(b.url)],
      certFile: pki.certFile,
      keyFile: pki.keyFile,
      ca: pki.ca,
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await a?.teardown();
    if (!bStopped) await b?.teardown();
    await database?.drop();
    pki?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the proxy refuses a TLS 1.2 handshake and completes a verified TLS 1.3 one", async () => {
    const old = await handshake(proxy.port, "tls1_2", pki.caFile);
    expect(old.established).toBe(false);
    expect(old.output).toContain("alert protocol version");
    const current = await handshake(proxy.port, "tls1_3", pki.caFile);
    expect(current.output).toContain("Verification: OK");
    expect(current).toMatchObject({ established: true, protocol: "TLSv1.3" });
  });

  test("SDK clients whose sockets land on different nodes chat through the proxy over WSS", async () => {
    const alice = ClearBoxClient.open({ serverUrl: proxy.url, storePath: join(dir, "a.db"), ca: pki.ca });
    const bob = ClearBoxClient.open({ serverUrl: proxy.url, storePath: join(dir, "b.db"), ca: pki.ca });
    const sockets: { close(): void }[] = [];
    try {
      await alice.register(uniqueUsername("alice"), password);
      await bob.register(uniqueUsername("bob"), password);
      expect(a.gateway.connections + b.gateway.connections).toBe(0);
      const aliceSocket = await alice.connect();
      sockets.push(aliceSocket);
      await until(() => a.gateway.connections + b.gateway.connections === 1, 15_000, "alice");
      // least_conn sends the second WebSocket to the node without one.
      const bobSocket = await bob.connect();
      sockets.push(bobSocket);
      await until(() => a.gateway.connections + b.gateway.connections === 2, 15_000, "bob");
      expect([a.gateway.connections, b.gateway.connections]).toEqual([1, 1]);

      const toBob = new Promise<string>((resolve, reject) => {
        bobSocket.on("message", (frame) => {
          bob.decryptText({ from: frame.from, envelope: frame.envelope }).then(resolve, reject);
          bobSocket.ack([frame]);
        });
      });
      const sent = await aliceSocket.sendToUser(
        crypto.randomUUID(),
        bob.userId,
        await alice.encrypt(bob.userId, "through the proxy 51ad"),
      );
      expect(sent.type).toBe("accepted");
      expect(await toBob).toBe("through the proxy 51ad");

      const toAlice = new Promise<string>((resolve, reject) => {
        aliceSocket.on("message", (frame) => {
          alice.decryptText({ from: frame.from, envelope: frame.envelope }).then(resolve, reject);
          aliceSocket.ack([frame]);
        });
      });
      const reply = await bobSocket.sendToUser(
        crypto.randomUUID(),
        alice.userId,
        await bob.encrypt(alice.userId, "and back 0e7b"),
      );
      expect(reply.type).toBe("accepted");
      expect(await toAlice).toBe("and back 0e7b");
    } finally {
      for (const socket of sockets) socket.close();
      alice.close();
      bob.close();
    }
  });

  test("the access log holds no query string, no client address and no id from the path", async () => {
    const response = await fetch(`${proxy.url}/healthz?token=secret-query-value-93f1`, {
      tls: { ca: pki.ca },
    });
    expect(response.status).toBe(200);
    // User, group and erasure ids travel in paths: the log would name people an erasure cannot
    // reach, and an erasure id fetches its receipt. Whatever the nodes answer, none is logged.
    const [user, group, erasure] = [randomUUID(), randomUUID(), randomUUID()];
    for (const path of [
      `/v1/keys/${user}`,
      `/v1/groups/${group}/members/${user}`,
      `/v1/erasures/${erasure}`,
    ]) {
      await (await fetch(`${proxy.url}${path}`, { tls: { ca: pki.ca } })).arrayBuffer();
    }
    await until(() => proxy.accessLog().includes("GET /v1/erasures/"), 15_000, "the access log lines");
    const log = proxy.accessLog();
    expect(log).toContain("GET /healthz ");
    expect(log).not.toContain("secret-query-value-93f1");
    expect(log).not.toContain("token=");
    expect(log).not.toContain("127.0.0.1 -");
    expect(log).toContain("GET /v1/keys/:id ");
    expect(log).toContain("GET /v1/groups/:id/members/:id ");
    expect(log).toContain("GET /v1/erasures/:id ");
    for (const id of [user, group, erasure]) expect(log).not.toContain(id);
  });

  test("with one node stopped, every request through the proxy is answered by the other", async () => {
    bStopped = true;
    await b.teardown();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const response = await fetch(`${proxy.url}/readyz`, { tls: { ca: pki.ca } });
      statuses.push(response.status);
    }
    expect(statuses).toEqual(Array(10).fill(200));
    // nginx noticed the refused connections: passive health checking marked the node failed.
    expect(proxy.errorLog()).toContain(`upstream: "http://${hostPort(b.url)}`);
    // A new account made through the proxy lands on the surviving node.
    const carol = ClearBoxClient.open({ serverUrl: proxy.url, storePath: join(dir, "c.db"), ca: pki.ca });
    try {
      await carol.register(uniqueUsername("carol"), password);
      const socket = await carol.connect();
      expect(a.gateway.connections).toBeGreaterThanOrEqual(1);
      socket.close();
    } finally {
      carol.close();
    }
  });
});

describe.skipIf(!nginx)("deploy/nginx/clearbox.conf: what a node receives", () => {
  // ClearBox has no notion of a client address yet (issue 13 adds trusted proxies), so a tiny
  // upstream that echoes the request headers shows what the proxy forwards.
  let pki: TestPki;
  let echo: ReturnType<typeof Bun.serve>;
  let proxy: TestProxy;

  beforeAll(async () => {
    pki = createTestPki();
    echo = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch(request, server) {
        if (
          request.headers.get("upgrade") === "websocket" &&
          server.upgrade(request, { data: request.headers })
        )
          return;
        return Response.json({
          path: new URL(request.url).pathname,
          headers: Object.fromEntries(request.headers),
        });
      },
      websocket: {
        open(ws) {
          ws.send(JSON.stringify(Object.fromEntries(ws.data as Headers)));
        },
        message() {},
      },
    });
    const upstream = `127.0.0.1:${echo.port}`;
    proxy = await startNginx({
      nginx: nginx as string,
      upstreams: [upstream, upstream],
      certFile: pki.certFile,
      keyFile: pki.keyFile,
      ca: pki.ca,
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    echo?.stop(true);
    pki?.remove();
  });

  test("HTTP requests carry X-Forwarded-For (the peer's address, a client's own value overwritten) and X-Forwarded-Proto", async () => {
    const response = await fetch(`${proxy.url}/v1/accounts`, {
      tls: { ca: pki.ca },
      headers: { "x-forwarded-for": "203.0.113.7" },
    });
    const seen = (await response.json()) as { headers: Record<string, string> };
    expect(seen.headers["x-forwarded-for"]).toBe("127.0.0.1");
    expect(seen.headers["x-forwarded-proto"]).toBe("https");
    expect(seen.headers.host).toBe("127.0.0.1");
    // Not an upgrade: no Upgrade header, and the upstream connection is kept alive.
    expect(seen.headers.upgrade).toBeUndefined();
    expect(seen.headers.connection).toBeUndefined();
  });

  test("the WebSocket upgrade reaches the node with the same forwarding headers", async () => {
    const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}/v1/ws`, {
      tls: { ca: pki.ca },
      headers: { "x-forwarded-for": "203.0.113.7" },
    } as never);
    const first = await new Promise<Record<string, string>>((resolve, reject) => {
      ws.onmessage = (event) => resolve(JSON.parse(String(event.data)));
      ws.onerror = () => reject(new Error("the WebSocket through the proxy failed"));
    });
    ws.close();
    expect(first["x-forwarded-for"]).toBe("127.0.0.1");
    expect(first["x-forwarded-proto"]).toBe("https");
    expect(first.upgrade?.toLowerCase()).toBe("websocket");
    expect(first.connection?.toLowerCase()).toBe("upgrade");
  });

  test("an nginx whose port another server took meanwhile boots on a fresh port, never taking that server for itself", async () => {
    // The other server answers TLS with the same certificate on the port handed out first: while
    // nginx retries its bind there, a health check alone would take it for the proxy.
    const other = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      tls: { cert: readFileSync(pki.certFile, "utf8"), key: readFileSync(pki.keyFile, "utf8") },
      fetch: () => new Response("not the proxy"),
    });
    let second: TestProxy | undefined;
    try {
      const upstream = `127.0.0.1:${echo.port}`;
      second = await startNginx({
        nginx: nginx as string,
        upstreams: [upstream, upstream],
        certFile: pki.certFile,
        keyFile: pki.keyFile,
        ca: pki.ca,
        ports: takenFirst(Number(other.port)),
      });
      expect(second.port).not.toBe(Number(other.port));
      const response = await fetch(`${second.url}/v1/accounts`, { tls: { ca: pki.ca } });
      expect(((await response.json()) as { path: string }).path).toBe("/v1/accounts");
    } finally {
      await second?.stop();
      other.stop(true);
    }
  }, 60_000);
});
