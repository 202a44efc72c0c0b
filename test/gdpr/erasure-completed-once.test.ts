import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { CHAIN_LOCK } from "../../src/audit/service.ts";
import { rowsOf } from "../../src/db/index.ts";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase, untilLockWaiters } from "../support/postgres.ts";

/**
 * Two erasure runners racing on the `audit` step: node A, slow (it waits for the audit chain's
 * lock), is taken for gone and node B takes the job over, both running the step. Each wrote its
 * `erasure.completed` entry, so the chain said the erasure completed twice. Now the step's entry,
 * the key's destruction and the step's record commit together under the claim: A's rolls back.
 */
describe("an erasure's audit step run by two nodes at once", () => {
  let database: TestDatabase;
  const started: TestNode[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    for (const node of started) await node.teardown().catch(() => undefined);
    await database?.drop();
  });

  test("erasure.completed is written once, by the node holding the claim", async () => {
    const env = {
      ...stackEnv("services", runPrefix()),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    // A stops after the `redis` step, its claim kept (as a crash would leave it); the test then runs
    // its last step itself, held up at the chain's lock.
    let crashed = false;
    const a = await startTestNode("postgres", {
      database,
      env: { ...env, NODE_ID: "once-a" },
      afterErasureStep: (step) => {
        if (step === "redis" && !crashed) {
          crashed = true;
          throw new SimulatedCrash("stopped before the audit step");
        }
      },
    });
    started.push(a);
    const b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "once-b" } });
    started.push(b);
    const victim = await registerAndLogin(api(a.url));
    const completions = async () =>
      rowsOf<{ n: number }>(
        await b.database.db.execute(
          sql`select count(*)::int as n from audit_log where action = 'erasure.completed'`,
        ),
      )[0]?.n;

    const erasureId = await a.gdpr.erasures.start(victim.userId, "admin");
    await a.gdpr.erasures.settled(erasureId);
    expect(crashed).toBe(true);
    expect(await completions()).toBe(0);

    let slowRun: Promise<unknown> = Promise.resolve();
    await b.database.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${sql.raw(String(CHAIN_LOCK))})`);
      // A runs the audit step under its claim and waits for the chain; B takes the job over as if
      // A were gone, and its run of the same step waits too.
      slowRun = a.gdpr.erasures.run(erasureId).then(
        () => "finished",
        (error: unknown) => (error as Error).name,
      );
      await untilLockWaiters(b.database.db, 1);
      expect(await b.gdpr.erasures.resumePending(["once-a"])).toBe(1);
      await untilLockWaiters(b.database.db, 2);
    });
    // A's run ends refused: its claim was taken.
    expect(await slowRun).toBe("ClaimLost");
    await b.gdpr.erasures.settled(erasureId);

    expect(await completions()).toBe(1);
    const status = (await api(b.url).get(`/v1/erasures/${erasureId}`)).body;
    expect(status.status).toBe("done");
    expect(verifyReceipt(status.receipt)).toBe(true);
    // The key destroyed is counted by the run that destroyed it (the slow run's, committed, left
    // the other's count at 0).
    expect(status.receipt.payload.stores.audit.removed).toBe(1);
    // The chain still verifies with the one entry.
    const verify = await api(b.adminUrl).get("/admin/v1/audit/verify", ADMIN_TOKEN);
    expect(verify.body.ok).toBe(true);
  }, 90_000);
});
