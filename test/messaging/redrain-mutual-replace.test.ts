import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

/** Rounds of two sockets of one device opened at once, one on each node (more to chase it). */
const ROUNDS = Number(process.env.MUTUAL_ROUNDS ?? 20);

/**
 * A device whose connection drops and comes back through a load balancer can have two sockets
 * opening at once on two nodes. Each replaces the other device sockets it finds in the presence
 * leases on other nodes (4409, "replaced by a newer connection"), without asking which is newer:
 * the older socket's step may find and close the newer one while the newer closes the older, and
 * the device is left with no socket, told on its newest one not to reconnect (4409,
 * docs/PROTOCOL.md). One of the two must stay open.
 */
describe("two sockets of one device opened at once on two nodes", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let a: TestNode;
  let b: TestNode;

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "mutual-a" } });
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "mutual-b" } });
    const until = Date.now() + 10_000;
    while (a.actors.ringMembers().length < 2 || b.actors.ringMembers().length < 2) {
      if (Date.now() > until) throw new Error("the two nodes never saw each other");
      await Bun.sleep(50);
    }
  });
  afterAll(async () => {
    await a?.teardown();
    await b?.teardown();
    await database?.drop();
  });

  // Before connection ids were ordered (UUIDv7), each socket closed the other: both 4409 in 20 of 20 rounds.
  test(`one of the two stays open (${ROUNDS} rounds)`, async () => {
    const gina = await registerAndLogin(api(a.url));
    const bothClosed: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const [x, y] = await Promise.all([
        TestSocket.open(b.url, gina.accessToken),
        TestSocket.open(a.url, gina.accessToken),
      ]);
      // Settle: each socket's replacement step has run (or it closed).
      await x.whenClosed(2_000).catch(() => undefined);
      await y.whenClosed(2_000).catch(() => undefined);
      if (x.closed && y.closed) bothClosed.push(round);
      for (const s of [x, y]) if (!s.closed) await s.close();
    }
    expect(bothClosed).toEqual([]);
  }, 120_000);
});
