import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { READINESS_REUSE_MS } from "../../src/http/app.ts";
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

  test("a hung ping is answered 503, is not started again while it hangs, and does not hold requests once it settles", async () => {
    const database = node.database;
    const ping = database.ping.bind(database);
    // The first ping hangs (a query sent on a connection that stalled) until `settle`; later pings
    // answer, as the database does.
    let pings = 0;
    let settle = () => {};
    database.ping = () => {
      pings++;
      if (pings === 1) return new Promise<void>((resolve) => (settle = resolve));
      return ping();
    };
    const readyz = async () => {
      const reply = await fetch(new URL("/readyz", node.url), { signal: AbortSignal.timeout(15_000) });
      return { status: reply.status, body: (await reply.json()) as { services: Record<string, string> } };
    };
    try {
      // The rounds that meet the hung ping answer (unavailable) instead of hanging with it, and
      // none starts a second ping beside it (each round did: they piled up while it hung).
      for (let round = 0; round < 3; round++) {
        const answer = await readyz();
        expect(answer.status).toBe(503);
        expect(answer.body.services.pglite).toBe("unavailable");
        await Bun.sleep(READINESS_REUSE_MS);
      }
      expect(pings).toBe(1);
      settle();
      // Once it settled, a new round pings afresh and the database answers.
      let later = await readyz();
      for (let i = 0; i < 100 && later.status !== 200; i++) {
        await Bun.sleep(300);
        later = await readyz();
      }
      expect(later.status).toBe(200);
      expect(pings).toBeGreaterThanOrEqual(2);
    } finally {
      database.ping = ping;
    }
  });
});
