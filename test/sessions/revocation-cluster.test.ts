import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CloseCode } from "../../src/protocol/index.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin, type SessionBody } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

/** Waits until the user's sockets on these nodes hold presence leases. */
async function onlineOn(node: TestNode, userId: string, nodeIds: string[]): Promise<void> {
  const want = [...nodeIds].sort().join();
  const deadline = Date.now() + 15_000;
  for (;;) {
    const have = (await node.presence.sockets(userId))
      .map((s) => s.nodeId)
      .sort()
      .join();
    if (have === want) return;
    if (Date.now() > deadline) throw new Error(`sockets online on [${have}], wanted [${want}]`);
    await Bun.sleep(20);
  }
}

describe("revocation across three nodes on PostgreSQL, Redis and RabbitMQ", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let nodes: TestNode[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
      // No grace window: a second presentation of a refresh token is always the theft signal here.
      REFRESH_GRACE_SECONDS: "0",
    };
    nodes = [];
    for (const id of ["rev-1", "rev-2", "rev-3"]) {
      nodes.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: id } }));
    }
    const until = Date.now() + 15_000;
    while (nodes.some((n) => n.actors.ringMembers().length < 3)) {
      if (Date.now() > until) throw new Error("the three nodes never saw each other");
      await Bun.sleep(50);
    }
  });
  afterAll(async () => {
    for (const node of nodes) await node.teardown();
    await database?.drop();
  });

  test("a refresh replay handled by node 1 closes the device's socket on node 2 (4401)", async () => {
    const [n1, n2, n3] = nodes;
    const alice = await registerAndLogin(api(n3.url));
    const socket = await TestSocket.open(n2.url, alice.accessToken);
    await onlineOn(n1, alice.userId, ["rev-2"]);
    const client = api(n1.url);
    expect((await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken })).status).toBe(
      201,
    );
    expect((await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken })).status).toBe(
      401,
    );
    // Generous: the close crosses RabbitMQ on a loaded machine; the duration is not what is tested.
    expect((await socket.whenClosed(15_000)).code).toBe(CloseCode.revoked);
    await expect(TestSocket.open(n2.url, alice.accessToken)).rejects.toThrow();
  });

  test("a password change on node 3 closes the account's sockets on nodes 1, 2 and 3; the caller's new socket on node 1 outlives a late close", async () => {
    const [n1, n2, n3] = nodes;
    const client = api(n3.url);
    const alice = await registerAndLogin(client);
    const sessions: SessionBody[] = [alice];
    for (const registrationId of [201, 202]) {
      sessions.push(
        (
          await client.post("/v1/sessions", {
            username: alice.username,
            password: alice.password,
            registrationId,
          })
        ).body,
      );
    }
    const caller = await TestSocket.open(n3.url, sessions[0].accessToken);
    const onOne = await TestSocket.open(n1.url, sessions[1].accessToken);
    const onTwo = await TestSocket.open(n2.url, sessions[2].accessToken);
    await onlineOn(n3, alice.userId, ["rev-1", "rev-2", "rev-3"]);
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: alice.password, newPassword: "changed on node three" },
      sessions[0].accessToken,
    );
    expect(changed.status).toBe(200);
    expect((await onOne.whenClosed(15_000)).code).toBe(CloseCode.revoked);
    expect((await onTwo.whenClosed(15_000)).code).toBe(CloseCode.revoked);
    // The caller's socket was opened with a token of its device from before the change.
    expect((await caller.whenClosed(15_000)).code).toBe(CloseCode.revoked);
    // The caller reconnects, on node 1, with the session the change answered with. The close the
    // change sent to node 1 crosses RabbitMQ and may land after this socket opened: the same command
    // again (asked, so that it has been handled when the answer comes) must spare the new socket.
    const again = await TestSocket.open(n1.url, changed.body.accessToken);
    await onlineOn(n3, alice.userId, ["rev-1"]);
    const claims = changed.body.accessToken.split(".")[1];
    const { gen } = JSON.parse(Buffer.from(claims, "base64url").toString()) as { gen: number };
    const closedOne = await n3.actors.ask("gateway:rev-1", {
      type: "close",
      userId: alice.userId,
      deviceId: alice.deviceId,
      generationBelow: gen,
      code: CloseCode.revoked,
      reason: "tokens revoked",
    });
    expect(closedOne).toBe(false);
    again.send({ type: "ping" });
    await again.next((f) => f.type === "pong");
    expect(again.closed).toBeUndefined();
    await again.close();
  });
});
