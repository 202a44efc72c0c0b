import { describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode } from "../support/node.ts";
import { createTestDatabase } from "../support/postgres.ts";

describe("an erasure interrupted by a crash", () => {
  test("is still pending after the crash and completes when a node starts again", async () => {
    const database = await createTestDatabase();
    const crashing = await startTestNode("postgres", {
      database,
      keepData: true,
      afterErasureStep: (step) => {
        if (step === "history") throw new SimulatedCrash(`crash after ${step}`);
      },
    });
    const http = api(crashing.url);
    const victim = await registerAndLogin(http);
    const bystander = await registerAndLogin(http);
    const started = await http.call("DELETE", "/v1/me", {
      token: victim.accessToken,
      body: { password: victim.password },
    });
    expect(started.status).toBe(202);
    const { erasureId } = started.body;
    await crashing.gdpr.erasures.settled(erasureId);
    const midway = (await http.get(`/v1/erasures/${erasureId}`)).body;
    expect(midway).toEqual({ erasureId, status: "pending" });
    await crashing.abort();

    const restarted = await startTestNode("postgres", { database, dataDir: crashing.dataDir });
    try {
      const again = api(restarted.url);
      const deadline = Date.now() + 15_000;
      let status = (await again.get(`/v1/erasures/${erasureId}`)).body;
      while (status.status !== "done" && Date.now() < deadline) {
        await Bun.sleep(100);
        status = (await again.get(`/v1/erasures/${erasureId}`)).body;
      }
      expect(status.status).toBe("done");
      expect(verifyReceipt(status.receipt)).toBe(true);
      // Steps done before the crash keep their recorded counts; the rest ran after the restart.
      expect(status.receipt.payload.stores.postgres.removed).toBeGreaterThan(0);
      expect(status.receipt.payload.stores.audit.removed).toBe(1);
      // Running it twice is harmless: the same receipt, and the bystander is untouched.
      await restarted.gdpr.erasures.run(erasureId);
      expect((await again.get(`/v1/erasures/${erasureId}`)).body).toEqual(status);
      expect((await again.get("/v1/devices", bystander.accessToken)).status).toBe(200);
    } finally {
      await restarted.teardown();
      await database.drop();
      rmSync(crashing.dataDir, { recursive: true, force: true });
    }
  });
});
