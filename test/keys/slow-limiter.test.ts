import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RateLimitRule } from "../../src/ratelimit/index.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { validUpload } from "./fixtures.ts";

// More fetches at once than the PostgreSQL pool's 10 connections (PGlite has one).
const FETCHES = 12;

describe.each(["pglite", "postgres"] as Backend[])(
  "key fetches while the rate limiter is slow, %s",
  (backend) => {
    let node: TestNode;

    beforeAll(async () => {
      node = await startTestNode(backend);
    });
    afterAll(() => node?.teardown());

    test("hold no database connection while they wait for the limiter: the database answers others meanwhile", async () => {
      const client = api(node.url);
      const alice = await registerAndLogin(client);
      const bob = await registerAndLogin(client);
      const { upload } = await validUpload(FETCHES);
      expect((await client.put("/v1/keys", upload, bob.accessToken)).status).toBe(204);

      // The limiter (Redis, shared by the nodes) answers the per-target budgets only when let go: a
      // Redis that is slow or reconnecting.
      const limiter = node.rateLimiter;
      const hit = limiter.hit.bind(limiter);
      let waiting = 0;
      let letGo!: () => void;
      const gate = new Promise<void>((resolve) => {
        letGo = resolve;
      });
      limiter.hit = async (rule: RateLimitRule, key: string) => {
        if (rule.name === "keys.target") {
          waiting++;
          await gate;
        }
        return hit(rule, key);
      };
      try {
        const fetches = Array.from({ length: FETCHES }, () =>
          client.get(`/v1/keys/${bob.userId}`, alice.accessToken),
        );
        for (let i = 0; i < 200 && waiting < FETCHES; i++) await Bun.sleep(50);
        // Before: each fetch waited for the limiter inside its transaction, holding a pooled
        // connection (PGlite: the database's one queue) and its FOR SHARE locks, so nothing else
        // reached the database until the limiter answered.
        const answered = await Promise.race([
          node.database.ping().then(() => "answered" as const),
          Bun.sleep(10_000).then(() => "stuck" as const),
        ]);
        expect(answered).toBe("answered");
        // Every fetch reached the limiter: none waited for a connection (before: 1 on PGlite, 10 on PostgreSQL).
        expect(waiting).toBe(FETCHES);
        letGo();
        const replies = await Promise.all(fetches);
        expect(replies.map((r) => r.status)).toEqual(Array(FETCHES).fill(200));
        const preKeys = replies.map(
          (r) => (r.body as { devices: { preKey: { keyId: number } }[] }).devices[0]?.preKey?.keyId,
        );
        expect(new Set(preKeys).size).toBe(FETCHES);
      } finally {
        letGo();
        limiter.hit = hit;
      }
    }, 60_000);
  },
);
