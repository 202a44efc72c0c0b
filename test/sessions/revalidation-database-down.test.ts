import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CloseCode } from "../../src/protocol/index.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, loginDevice, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { OwnPostgres } from "../support/own-postgres.ts";
import { TestSocket, waitUntil } from "../support/ws.ts";

/**
 * The socket revalidation reads token generations from the database every
 * WS_REVALIDATE_INTERVAL_SECONDS (1 s here). With the database gone (its own PostgreSQL, killed -9),
 * a pass that cannot read must close nobody and leave the node serving; once it is back, the
 * passes close only what was revoked.
 */
describe("socket revalidation while PostgreSQL is down", () => {
  let pg: OwnPostgres;
  let node: TestNode;

  beforeAll(async () => {
    pg = await OwnPostgres.start();
    const url = await pg.createDatabase("clearbox_revalidation");
    node = await startTestNode("postgres", {
      database: { url, drop: async () => {} },
      env: { ...stackEnv("services", runPrefix()), WS_REVALIDATE_INTERVAL_SECONDS: "1" },
    });
  });
  afterAll(async () => {
    await node?.teardown().catch(() => {});
    await pg?.stop();
  });

  const failedPasses = () =>
    node.logs.filter((line) => line.includes("socket revalidation could not read token generations")).length;

  test("passes that cannot read close no socket and the node keeps answering; after the restart only a revoked socket closes", async () => {
    const client = api(node.url);
    const people = await Promise.all(Array.from({ length: 4 }, () => registerAndLogin(client)));
    const sockets = await Promise.all(people.map((p) => TestSocket.open(node.url, p.accessToken)));
    const phone = await loginDevice(client, people[0] as { username: string; password: string });
    for (const socket of sockets) {
      socket.send({ type: "ping" });
      await socket.next((f) => f.type === "pong");
    }

    const before = failedPasses();
    await pg.kill();
    await waitUntil(
      () => failedPasses() >= before + 3,
      "three revalidation passes without the database",
      20_000,
    );
    // Every socket open, and each still answered by the node's event loop.
    for (const socket of sockets) {
      expect(socket.closed).toBeUndefined();
      socket.send({ type: "ping" });
      await socket.next((f) => f.type === "pong");
    }

    await pg.restart();
    // The phone removes the first person's device 1 (its close goes out at once); the other sockets
    // stay open through the passes after the restart.
    await waitUntil(
      async () => (await client.get("/v1/devices", phone.accessToken)).status === 200,
      "the node reading the database again",
      30_000,
    );
    expect((await client.delete(`/v1/devices/${people[0]?.deviceId}`, phone.accessToken)).status).toBe(204);
    expect((await sockets[0]?.whenClosed())?.code).toBe(CloseCode.deviceRemoved);
    const after = failedPasses();
    await Bun.sleep(3_000);
    expect(failedPasses()).toBe(after);
    for (const socket of sockets.slice(1)) expect(socket.closed).toBeUndefined();
    await Promise.all(sockets.slice(1).map((s) => s.close()));
  }, 120_000);
});
