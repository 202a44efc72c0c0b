import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { erasureLogRef } from "../../src/gdpr/erasure.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * An erasure id is the one secret `GET /v1/erasures/:erasureId` asks for (no token) to answer the
 * job's receipt: the node's log lines name a job by a prefix of it, never the whole id, whichever
 * way the job goes (done at once, or a step failed and retried).
 */
describe("erasure log lines", () => {
  let node: TestNode;
  let failNext = false;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      erasureRetryBaseMs: 50,
      afterErasureStep: (step) => {
        if (step === "history" && failNext) {
          failNext = false;
          throw new Error("the history store is away");
        }
      },
    });
  });
  afterAll(() => node?.teardown());

  const eraseAndWait = async () => {
    const http = api(node.url);
    const victim = await registerAndLogin(http);
    const started = await http.call("DELETE", "/v1/me", {
      token: victim.accessToken,
      body: { password: victim.password },
    });
    expect(started.status).toBe(202);
    const { erasureId } = started.body as { erasureId: string };
    const deadline = Date.now() + 30_000;
    let status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    while (status.status !== "done" && Date.now() < deadline) {
      await Bun.sleep(50);
      status = (await http.get(`/v1/erasures/${erasureId}`)).body;
    }
    expect(status.status).toBe("done");
    return erasureId;
  };
  /** The lines about this job: those naming its log reference. */
  const linesOf = (erasureId: string) =>
    node.logs.filter((line) => line.includes(`"erasure":"${erasureLogRef(erasureId)}"`));

  test("a job that runs through: its step and done lines name it by its prefix, not by its id", async () => {
    const erasureId = await eraseAndWait();
    expect(node.logs.join("")).not.toContain(erasureId);
    const lines = linesOf(erasureId);
    expect(lines.some((line) => line.includes("erasure step done"))).toBe(true);
    expect(lines.some((line) => line.includes("erasure done"))).toBe(true);
  });

  test("a job whose step failed and was retried: the failure's line names it by its prefix, not by its id", async () => {
    failNext = true;
    const erasureId = await eraseAndWait();
    expect(node.logs.join("")).not.toContain(erasureId);
    const lines = linesOf(erasureId);
    expect(lines.some((line) => line.includes("erasure step failed; will retry"))).toBe(true);
    expect(lines.some((line) => line.includes("erasure done"))).toBe(true);
  });
});
