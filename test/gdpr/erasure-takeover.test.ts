import { afterAll, describe, expect, test } from "bun:test";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";

/**
 * An erasure whose node dies mid-way, in a cluster whose other nodes keep running. Only a node's
 * start resumed pending jobs: the survivors never did, so the job stayed pending (the user fenced,
 * their history, queues and Redis keys kept, the receipt never signed) until some node restarted,
 * which in a cluster that replaces a dead node by a new one may be never. Now the job is claimed by
 * the node running it, and a survivor takes it over once that node has left the ring; while it is
 * alive, nobody else runs it. Node A stops its job after the `postgres` step (as a crash would,
 * `SimulatedCrash`), then is aborted (no graceful leave); node B, up all along, must finish it.
 */
describe("an erasure whose node dies in a running cluster", () => {
  let database: TestDatabase;
  const started: TestNode[] = [];
  afterAll(async () => {
    for (const node of started) await node.teardown().catch(() => undefined);
    await database?.drop();
  });

  test("is finished by a surviving node, not left pending until a restart", async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", runPrefix()),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
    };
    const a = await startTestNode("postgres", {
      database,
      env: { ...env, NODE_ID: "takeover-a" },
      afterErasureStep: (step) => {
        if (step === "postgres") throw new SimulatedCrash(`crash after ${step}`);
      },
    });
    started.push(a);
    const b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "takeover-b" } });
    started.push(b);
    const until = Date.now() + 10_000;
    while (a.actors.ringMembers().length < 2 || b.actors.ringMembers().length < 2) {
      if (Date.now() > until) throw new Error("the two nodes never saw each other");
      await Bun.sleep(50);
    }
    const http = api(b.url);
    const victim = await registerAndLogin(api(a.url));
    const bystander = await registerAndLogin(http);

    const erasureId = await a.gdpr.erasures.start(victim.userId, "admin");
    await a.gdpr.erasures.settled(erasureId);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body).toEqual({ erasureId, status: "pending" });
    // A is alive and in the ring: its job is not B's to run.
    expect(await b.gdpr.erasures.resumePending()).toBe(0);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body.status).toBe("pending");

    await a.abort();
    const deadline = Date.now() + 20_000;
    let status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    while (status.status !== "done" && Date.now() < deadline) {
      await Bun.sleep(100);
      status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    }
    expect(status.status).toBe("done");
    expect(verifyReceipt(status.receipt)).toBe(true);
    // The step A finished keeps its count; B ran the rest.
    expect(status.receipt.payload.stores.postgres.removed).toBeGreaterThan(0);
    expect(status.receipt.payload.stores.audit.removed).toBe(1);
    expect((await http.get("/v1/devices", bystander.accessToken)).status).toBe(200);
  });
});
