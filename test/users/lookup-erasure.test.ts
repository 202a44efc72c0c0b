import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SimulatedCrash } from "../../src/gdpr/erasure.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Once a user's erasure has started, the directory names them no more: a lookup by username or by
 * id is 404, as for an account that does not exist, though the account's row is swept only in the
 * next step (a job stopped there, as by a crash, leaves it so until a node resumes it).
 */
describe("user lookups of a user whose erasure has started", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      afterErasureStep: (step) => {
        if (step === "fence") throw new SimulatedCrash(`stopped after ${step}`);
      },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("are 404 by username and by id; other users are found as before", async () => {
    const victim = await registerAndLogin(client);
    const bystander = await registerAndLogin(client);
    const other = await registerAndLogin(client);
    expect((await client.get(`/v1/users?username=${victim.username}`, bystander.accessToken)).status).toBe(
      200,
    );
    const started = await client.call("DELETE", "/v1/me", {
      token: victim.accessToken,
      body: { password: victim.password },
    });
    expect(started.status).toBe(202);
    await node.gdpr.erasures.settled(started.body.erasureId);
    for (const path of [`/v1/users?username=${victim.username}`, `/v1/users/${victim.userId}`]) {
      const res = await client.get(path, bystander.accessToken);
      expect({ path, status: res.status, code: res.body.error?.code }).toEqual({
        path,
        status: 404,
        code: "not_found",
      });
      expect(JSON.stringify(res.body)).not.toContain(victim.username);
    }
    const found = await client.get(`/v1/users?username=${other.username}`, bystander.accessToken);
    expect(found.body).toEqual({ userId: other.userId, username: other.username });
    expect((await client.get(`/v1/users/${other.userId}`, bystander.accessToken)).status).toBe(200);
  });
});
