import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { sql } from "drizzle-orm";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, lockWaiters, type TestDatabase } from "../support/postgres.ts";
import {
  removeScratchDataDirs,
  type SpawnedNode,
  scratchDataDir,
  spawnNodeProcess,
} from "../support/process.ts";
import { waitUntil } from "../support/ws.ts";

/** A ClearBox node in a process of its own, so the test can kill -9 it; resolves once it started. */
function spawnNode(env: Record<string, string>): Promise<SpawnedNode> {
  return spawnNodeProcess({
    ...process.env,
    ...env,
    DATA_DIR: scratchDataDir(),
    PORT: "0",
    ADMIN_PORT: "0",
    LOG_LEVEL: "info",
    NODE_ENV: "test",
  });
}

/**
 * An erasure whose node dies mid-way, in a cluster whose other nodes keep running. Only a node's
 * start resumed pending jobs: the survivors never did, so the job stayed pending (the user fenced,
 * their history, queues and Redis keys kept, the receipt never signed) until some node restarted,
 * which in a cluster that replaces a dead node by a new one may be never. Now the job is claimed by
 * the node running it, and a survivor takes it over once that node has left the ring; while it is
 * alive, nobody else runs it. Node B is up all along and must finish the jobs of the nodes that die.
 */
describe("an erasure whose node dies in a running cluster", () => {
  let database: TestDatabase;
  let env: Record<string, string>;
  let b: TestNode;
  let http: Api;
  const started: TestNode[] = [];
  let spawned: Subprocess | undefined;

  beforeAll(async () => {
    database = await createTestDatabase();
    env = {
      ...stackEnv("services", runPrefix()),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "takeover-b" } });
    started.push(b);
    http = api(b.url);
  });
  afterAll(async () => {
    spawned?.kill(9);
    for (const node of started) await node.teardown().catch(() => undefined);
    await database?.drop();
    removeScratchDataDirs();
  });

  /** The erasure's answer once it is done (fails the test after 20 s). */
  async function finished(erasureId: string) {
    const deadline = Date.now() + 20_000;
    let status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    while (status.status !== "done" && Date.now() < deadline) {
      await Bun.sleep(100);
      status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    }
    expect(status.status).toBe("done");
    expect(verifyReceipt(status.receipt)).toBe(true);
    expect(status.receipt.payload.stores.postgres.removed).toBeGreaterThan(0);
    expect(status.receipt.payload.stores.audit.removed).toBe(1);
    return status;
  }

  test("stopped after a step and its node aborted: a survivor finishes it, not a restart", async () => {
    const a = await startTestNode("postgres", {
      database,
      env: { ...env, NODE_ID: "takeover-a" },
      afterErasureStep: (step) => {
        if (step === "postgres") throw new SimulatedCrash(`crash after ${step}`);
      },
    });
    started.push(a);
    await waitUntil(() => b.actors.ringMembers().length === 2, "the two nodes to see each other", 10_000);
    const victim = await registerAndLogin(api(a.url));
    const bystander = await registerAndLogin(http);

    const erasureId = await a.gdpr.erasures.start(victim.userId, "admin");
    await a.gdpr.erasures.settled(erasureId);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body).toEqual({ erasureId, status: "pending" });
    // A is alive and in the ring: its job is not B's to run.
    expect(await b.gdpr.erasures.resumePending()).toBe(0);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body.status).toBe("pending");

    await a.abort();
    await finished(erasureId);
    expect((await http.get("/v1/devices", bystander.accessToken)).status).toBe(200);
  });

  /**
   * Holds `userId`'s account row (FOR SHARE) in B's database, asks `node`'s admin RPC to erase the
   * user, waits until the job's `postgres` step waits for that row, runs `meanwhile` (the node's
   * kill or stop) and lets the row go. Resolves the erasure's id.
   */
  async function eraseWhileRowHeld(node: SpawnedNode, userId: string, meanwhile: () => Promise<void>) {
    let erasureId = "";
    await b.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from accounts where id = ${userId} for share`);
      const answer = await fetch(`${node.adminUrl}/admin/v1/users/${userId}/erase`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(answer.status).toBe(202);
      erasureId = ((await answer.json()) as { erasureId: string }).erasureId;
      await waitUntil(
        async () => (await lockWaiters(b.database.db)) > 0,
        "the erasure to wait for the account's row",
        10_000,
      );
      await meanwhile();
    });
    return erasureId;
  }

  test("its node killed (-9) in the middle of a step: a survivor finishes it", async () => {
    const node = await spawnNode({ ...env, NODE_ID: "takeover-v", DATABASE_URL: database.url, ADMIN_TOKEN });
    spawned = node.proc;
    await waitUntil(() => b.actors.ringMembers().length === 2, "the two nodes to see each other", 10_000);
    const victim = await registerAndLogin(api(node.url));
    // The job's `postgres` step waits for the account's row, and the node is killed there.
    const erasureId = await eraseWhileRowHeld(node, victim.userId, async () => {
      node.proc.kill(9);
      await node.proc.exited;
    });
    await finished(erasureId);
  });

  test("its node stopped gracefully while the job waits out a retry: a survivor finishes it at once", async () => {
    // A step failed once; its retry is ten minutes away. The graceful stop ends that wait. Before,
    // the job stayed claimed by the stopped node, and a node that leaves cleanly (its inbox deleted,
    // itself off the registry) is never reported gone: B took it over at its next retention pass
    // (hourly by default) or at some node's start.
    let failed = 0;
    const a = await startTestNode("postgres", {
      database,
      env: { ...env, NODE_ID: "takeover-g" },
      erasureRetryBaseMs: 600_000,
      afterErasureStep: (step) => {
        if (step === "postgres" && failed++ === 0) throw new Error("a step failed once");
      },
    });
    started.push(a);
    await waitUntil(() => b.actors.ringMembers().length === 2, "the two nodes to see each other", 10_000);
    const victim = await registerAndLogin(api(a.url));
    const erasureId = await a.gdpr.erasures.start(victim.userId, "admin");
    await waitUntil(() => failed > 0, "the job's step to fail once", 10_000);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body.status).toBe("pending");
    // A is alive and in the ring: its job is not B's to run.
    expect(await b.gdpr.erasures.resumePending()).toBe(0);

    await a.stop();
    await finished(erasureId);
  });

  test("its node stopped by SIGTERM in the middle of a step: it stops after that step and a survivor finishes it", async () => {
    const node = await spawnNode({ ...env, NODE_ID: "takeover-t", DATABASE_URL: database.url, ADMIN_TOKEN });
    spawned = node.proc;
    await waitUntil(() => b.actors.ringMembers().length === 2, "the two nodes to see each other", 10_000);
    const victim = await registerAndLogin(api(node.url));
    // The job's `postgres` step waits for the account's row, which the test holds until the node's
    // shutdown has told the job to stop.
    const erasureId = await eraseWhileRowHeld(node, victim.userId, async () => {
      node.proc.kill("SIGTERM");
      await node.logged("stopping erasures");
    });
    await node.logged("released unfinished erasures");
    expect(await node.proc.exited).toBe(0);
    await finished(erasureId);
  });
});
