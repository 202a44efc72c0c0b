import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestNode, type TestNode } from "../support/node.ts";

describe("GET /readyz", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(() => node?.teardown());

  test("300 concurrent requests share one round of checks: one database ping, not one each", async () => {
    const database = node.database;
    const ping = database.ping.bind(database);
    let pings = 0;
    database.ping = () => {
      pings++;
      return ping();
    };
    try {
      const replies = await Promise.all(
        Array.from({ length: 300 }, () => fetch(new URL("/readyz", node.url)).then((r) => r.status)),
      );
      expect(replies.every((status) => status === 200)).toBe(true);
      // Unauthenticated, and each answer was a query in front of the node's database connections.
      // Requests over more than READINESS_REUSE_MS on a loaded machine may start a second round.
      expect(pings).toBeLessThanOrEqual(2);
      expect(pings).toBeGreaterThanOrEqual(1);
    } finally {
      database.ping = ping;
    }
  });
});

describe("GET /readyz with a check that never answers", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(() => node?.teardown());

  test("a hung round is answered 503 and does not hold later requests once the service answers again", async () => {
    const database = node.database;
    const ping = database.ping.bind(database);
    // The first ping never settles (a query sent on a connection that died without a reset); later
    // pings answer, as the database does.
    let hung = false;
    database.ping = () => {
      if (!hung) {
        hung = true;
        return new Promise<void>(() => {});
      }
      return ping();
    };
    const readyz = async () => {
      const reply = await fetch(new URL("/readyz", node.url), { signal: AbortSignal.timeout(15_000) });
      return { status: reply.status, body: (await reply.json()) as { services: Record<string, string> } };
    };
    try {
      // The round that met the hung ping answers (unavailable) instead of hanging with it.
      const first = await readyz();
      expect(first.status).toBe(503);
      expect(first.body.services.pglite).toBe("unavailable");
      // A later request is not tied to that ping: once a new round runs, the database answers.
      let later = await readyz();
      // Polled for up to 30 s (it was 6 s: a deadline, not what is tested, and short when loaded).
      for (let i = 0; i < 100 && later.status !== 200; i++) {
        await Bun.sleep(300);
        later = await readyz();
      }
      expect(later.status).toBe(200);
      expect(hung).toBe(true);
    } finally {
      database.ping = ping;
    }
  });
});
