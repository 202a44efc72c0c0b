import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { waitUntil } from "../support/ws.ts";

/**
 * A node taken for gone that was only slow: its job is taken over by a survivor while its step
 * still runs, and both run that step. The first to get the account's row erases the account; the
 * other finds nothing left. The receipt must count what was erased, not the second run's nothing.
 */
describe("an erasure taken over from a node that was slow, not dead", () => {
  let database: TestDatabase;
  const started: TestNode[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    for (const node of started) await node.teardown().catch(() => undefined);
    await database?.drop();
  });

  test("its receipt counts the account its first node erased in the step both ran", async () => {
    const env = {
      ...stackEnv("services", runPrefix()),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    const a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "slow-a" } });
    started.push(a);
    const b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "slow-b" } });
    started.push(b);
    const victim = await registerAndLogin(api(a.url));
    const lockWaits = async () => {
      const [row] = rowsOf<{ n: number }>(
        await b.database.db.execute(
          sql`select count(*)::int as n from pg_stat_activity
              where wait_event_type = 'Lock' and datname = current_database()`,
        ),
      );
      return row?.n ?? 0;
    };
    let erasureId = "";
    // The test holds the account's row: A's `postgres` step waits for it (A is slow), B takes the
    // job over as if A were gone, and B's run of the same step waits behind A's.
    await b.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from accounts where id = ${victim.userId} for share`);
      erasureId = await a.gdpr.erasures.start(victim.userId, "admin");
      await waitUntil(async () => (await lockWaits()) >= 1, "A's step to wait for the account's row", 10_000);
      expect(await b.gdpr.erasures.resumePending(["slow-a"])).toBe(1);
      await waitUntil(async () => (await lockWaits()) >= 2, "B's step to wait behind A's", 10_000);
    });
    await a.gdpr.erasures.settled(erasureId);
    await b.gdpr.erasures.settled(erasureId);
    const status = (await api(b.url).get(`/v1/erasures/${erasureId}`)).body;
    expect(status.status).toBe("done");
    expect(verifyReceipt(status.receipt)).toBe(true);
    // Before: B's run (nothing left) was recorded, A's lost with its claim: "account (0), devices (0)".
    expect(status.receipt.payload.stores.postgres.what).toContain("account (1)");
    expect(status.receipt.payload.stores.postgres.removed).toBeGreaterThan(0);
  }, 60_000);
});
