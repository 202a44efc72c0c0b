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
