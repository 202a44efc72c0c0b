import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { and, eq } from "drizzle-orm";
import { erasures } from "../../src/db/schema.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * Erasure requests of one user made at once (a client's retry of `DELETE /v1/me` after a timeout,
 * the person and an operator): each looked for a pending job, found none, and inserted its own, so
 * two jobs swept the same stores at once (two passes over other people's RabbitMQ queues each
 * re-publishing what they kept, two receipts, two `erasure.completed` entries). One pending job per
 * user now: every request answers its id.
 */
describe.each(BACKENDS)("erasure requests made at once on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("start one job, and every request answers its id", async () => {
    const victim = await registerAndLogin(client);
    const ids = await Promise.all(
      Array.from({ length: 6 }, (_, i) => node.gdpr.erasures.start(victim.userId, i % 2 ? "self" : "admin")),
    );
    expect(new Set(ids).size).toBe(1);
    const [id] = ids as [string];
    const pending = await node.database.db
      .select({ id: erasures.id })
      .from(erasures)
      .where(and(eq(erasures.userId, victim.userId), eq(erasures.status, "pending")));
    expect(pending.map((row) => row.id)).toEqual([id]);
    await node.gdpr.erasures.settled(id);
    expect((await node.gdpr.erasures.status(id))?.status).toBe("done");
    // The account is gone: a later request is `not_found`, as for any unknown user.
    await expect(node.gdpr.erasures.start(victim.userId, "admin")).rejects.toThrow("no such user");
  });
});
