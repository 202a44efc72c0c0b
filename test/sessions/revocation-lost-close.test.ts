import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { eq, sql } from "drizzle-orm";
import { userKey } from "../../actors/index.ts";
import { deviceRemovals } from "../../src/db/schema.ts";
import { CloseCode } from "../../src/protocol/index.ts";
import { AMQP_URL, runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, loginDevice, registerAndLogin } from "../support/http.ts";
import { socketState, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { TestSocket, waitUntil } from "../support/ws.ts";

/**
 * A revocation's close (4401) travels to the socket's node over the node link (RabbitMQ). Node B
 * reaches RabbitMQ through a TCP proxy the test cuts: B keeps serving its sockets and reaching
 * PostgreSQL and Redis (its leases stay, node A still sends it the close), but the close waits in
 * B's inbox, unread, for as long as the cut lasts. The socket must be closed anyway, by B's own
 * revalidation (WS_REVALIDATE_INTERVAL_SECONDS, 1 s here), not after its token's lifetime.
 */
describe("a revoked socket on a node cut off from the node links is closed all the same", () => {
  let database: TestDatabase;
  let proxy: TcpProxy;
  let a: TestNode;
  let b: TestNode;

  beforeAll(async () => {
    database = await createTestDatabase();
    const broker = new URL(AMQP_URL);
    proxy = await startTcpProxy(`tcp://${broker.hostname}:${broker.port || 5672}`);
    const throughProxy = new URL(AMQP_URL);
    throughProxy.hostname = "127.0.0.1";
    throughProxy.port = String(proxy.port);
    const env = {
      ...stackEnv("services", runPrefix()),
      REFRESH_GRACE_SECONDS: "0",
      WS_REVALIDATE_INTERVAL_SECONDS: "1",
    };
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "lost-a" } });
    b = await startTestNode("postgres", {
      database,
      env: { ...env, NODE_ID: "lost-b", AMQP_URL: throughProxy.toString() },
    });
    await waitUntil(
      () => a.actors.ringMembers().length === 2 && b.actors.ringMembers().length === 2,
      "the two nodes to see each other",
    );
  });
  afterAll(async () => {
    proxy?.refuse(false);
    for (const node of [b, a]) await node?.teardown();
    await proxy?.close();
    await database?.drop();
  });

  /**
   * Opens the session's socket on node B and waits until it is live there (its offline queue read,
   * its user actor told: nothing of its opening still needs the broker) and node A sees its lease.
   */
  async function socketOnB(session: {
    userId: string;
    deviceId: number;
    accessToken: string;
  }): Promise<TestSocket> {
    const socket = await TestSocket.open(b.url, session.accessToken);
    await waitUntil(
      () => socketState(b, session.userId, session.deviceId) === "live",
      "the socket to go live on node B",
    );
    await waitUntil(
      async () => (await a.presence.sockets(session.userId)).some((s) => s.nodeId === "lost-b"),
      "the socket's lease on node B",
    );
    return socket;
  }

  /** Cuts node B off RabbitMQ (open connections dropped, new ones refused) until `heal`. */
  async function cutB(): Promise<void> {
    proxy.refuse(true);
    proxy.cut();
    await waitUntil(() => !b.actors.transportConnected, "node B to lose its broker connection");
  }

  async function heal(): Promise<void> {
    proxy.refuse(false);
    await waitUntil(() => b.actors.transportConnected, "node B to reach its broker again", 30_000);
  }

  test("a refresh token replayed on node A: the device's socket on node B is closed with 4401", async () => {
    const alice = await registerAndLogin(api(a.url));
    const socket = await socketOnB(alice);
    await cutB();
    try {
      const client = api(a.url);
      expect((await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken })).status).toBe(
        201,
      );
      expect((await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken })).status).toBe(
        401,
      );
      // Generous: the duration is not what is tested, only that it is not the token's lifetime (900 s).
      expect((await socket.whenClosed(30_000)).code).toBe(CloseCode.revoked);
    } finally {
      await heal();
    }
  }, 90_000);

  test("a password change on node A: the other device's socket on node B is closed with 4401", async () => {
    const client = api(a.url);
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 311 });
    const socket = await socketOnB(phone);
    await cutB();
    try {
      const changed = await client.post(
        "/v1/me/password",
        { currentPassword: alice.password, newPassword: "changed while node B was cut off" },
        alice.accessToken,
      );
      expect(changed.status).toBe(200);
      expect((await socket.whenClosed(30_000)).code).toBe(CloseCode.revoked);
    } finally {
      await heal();
    }
  }, 90_000);

  test("a device removed on node A: its socket on node B is closed with 4404; a valid socket there stays", async () => {
    const client = api(a.url);
    // The removal asks the account's user actor first: one placed on node B would not answer while
    // B is cut off (the removal then fails with 500 before its close is even sent).
    let alice = await registerAndLogin(client);
    while (a.actors.ownerOf(userKey(alice.userId)) !== "lost-a") alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 312 });
    const removedSocket = await socketOnB(phone);
    const keptSocket = await socketOnB(alice);
    await cutB();
    try {
      expect((await client.delete(`/v1/devices/${phone.deviceId}`, alice.accessToken)).status).toBe(204);
      expect((await removedSocket.whenClosed(30_000)).code).toBe(CloseCode.deviceRemoved);
      // A pass that starts now checks the kept socket against its device's current generation.
      await b.gateway.revalidate();
      keptSocket.send({ type: "ping" });
      await keptSocket.next((f) => f.type === "pong");
      expect(keptSocket.closed).toBeUndefined();
    } finally {
      await heal();
    }
    await keptSocket.close();
  }, 90_000);

  test("a device removed while its account's actor is on the cut-off node: the log forgets its envelopes and the removal is audited", async () => {
    const client = api(a.url);
    let alice = await registerAndLogin(client);
    while (a.actors.ownerOf(userKey(alice.userId)) !== "lost-b") alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 313 });
    const waiting = {
      id: crypto.randomUUID(),
      senderUser: alice.userId,
      senderDevice: alice.deviceId,
      recipientUser: alice.userId,
      recipientDevice: phone.deviceId,
      groupId: null,
      ts: Date.now(),
      type: 1,
      body: Buffer.from("ciphertext for the phone").toString("base64"),
    };
    expect(await a.log.append([waiting])).toEqual([true]);
    await cutB();
    try {
      // The user actor on B does not answer: the removal reports it (500) after doing the rest.
      expect((await client.delete(`/v1/devices/${phone.deviceId}`, alice.accessToken)).status).toBe(500);
      expect((await client.get("/v1/devices", alice.accessToken)).body.devices).toHaveLength(1);
      expect(await a.log.undelivered(alice.userId, { device: phone.deviceId })).toEqual([]);
      const entries = await a.audit.entriesAbout(alice.userId);
      expect(entries.filter((e) => e.action === "device.remove")).toMatchObject([
        { details: { deviceId: phone.deviceId } },
      ]);
      // Asked again, the device is gone.
      expect((await client.delete(`/v1/devices/${phone.deviceId}`, alice.accessToken)).status).toBe(404);
      // Its id is not given to a new device while the removal is unfinished.
      expect((await loginDevice(client, alice, { registrationId: 314 })).deviceId).not.toBe(phone.deviceId);
    } finally {
      await heal();
    }
    // Once B answers again, the retention pass (of any node) finishes the removal: the actor on B
    // lets go of the device and its queue; then the id is free.
    await a.database.db
      .update(deviceRemovals)
      .set({ removedAt: sql`now() - interval '2 minutes'` })
      .where(eq(deviceRemovals.userId, alice.userId));
    expect((await a.retention.runOnce()).deviceRemovals).toEqual({ finished: 1, failed: 0 });
    expect((await loginDevice(client, alice, { registrationId: 315 })).deviceId).toBe(phone.deviceId);
  }, 90_000);
});
