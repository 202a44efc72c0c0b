import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { BLOCK_CHANGE_ACCOUNT_LIMIT, BLOCK_CHANGE_LIMIT } from "../../src/blocks/model.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Block and unblock had no budget while each is a transaction under the blocker's lock and, on a
 * cluster, a change every other node applies and acknowledges before the reply: a loop of
 * idempotent unblocks was free. Both routes spend one budget, per device and per account.
 */
describe("block changes: per-device and per-account budgets", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
  });

  const blockedBy = async (token: string): Promise<string[]> => {
    const res = await client.get("/v1/blocks", token);
    expect(res.status).toBe(200);
    return res.body.blocks.map((b: { userId: string }) => b.userId).sort();
  };

  test("a burst past the device's budget is 429 with Retry-After and a clear message, and changes nothing", async () => {
    const me = await registerAndLogin(client);
    const [x, y] = await Promise.all([registerAndLogin(client), registerAndLogin(client)]);
    // Blocks and unblocks, repeats included, spend the same budget.
    const calls = Array.from({ length: BLOCK_CHANGE_LIMIT.limit }, (_, i) =>
      i % 2 === 0
        ? client.post(`/v1/blocks/${x.userId}`, undefined, me.accessToken)
        : client.delete(`/v1/blocks/${x.userId}`, me.accessToken),
    );
    for (const res of await Promise.all(calls)) expect(res.status).toBe(204);
    expect((await client.post(`/v1/blocks/${x.userId}`, undefined, me.accessToken)).status).toBe(429);
    // x is blocked or not depending on the burst's order; whatever it is, nothing below changes it.
    const before = await blockedBy(me.accessToken);
    for (const res of [
      await client.post(`/v1/blocks/${y.userId}`, undefined, me.accessToken),
      await client.delete(`/v1/blocks/${x.userId}`, me.accessToken),
      await client.post(`/v1/blocks/${x.userId}`, undefined, me.accessToken),
    ]) {
      expect({ status: res.status, body: res.body }).toEqual({
        status: 429,
        body: { error: { code: "rate_limited", message: "too many block changes, retry later" } },
      });
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
    }
    expect(await blockedBy(me.accessToken)).toEqual(before);
    expect(before).not.toContain(y.userId);
    // Listing is not a change, and another account keeps its own budget.
    expect((await client.post(`/v1/blocks/${y.userId}`, undefined, x.accessToken)).status).toBe(204);
    // Bad input is refused as before, without spending: blocking oneself is 400, not 429.
    expect((await client.post(`/v1/blocks/${me.userId}`, undefined, me.accessToken)).status).toBe(400);
  }, 120_000);

  test("more devices do not buy more changes past the account's budget", async () => {
    const me = await registerAndLogin(client);
    const x = await registerAndLogin(client);
    const devices = Math.floor(BLOCK_CHANGE_ACCOUNT_LIMIT.limit / BLOCK_CHANGE_LIMIT.limit);
    expect(devices * BLOCK_CHANGE_LIMIT.limit).toBe(BLOCK_CHANGE_ACCOUNT_LIMIT.limit);
    const tokens = [me.accessToken];
    while (tokens.length <= devices) {
      const login = await client.post("/v1/sessions", {
        username: me.username,
        password: me.password,
        registrationId: 4242,
      });
      expect(login.status).toBe(201);
      tokens.push(login.body.accessToken);
    }
    for (const token of tokens.slice(0, devices)) {
      for (let i = 0; i < BLOCK_CHANGE_LIMIT.limit; i++)
        expect((await client.delete(`/v1/blocks/${x.userId}`, token)).status).toBe(204);
    }
    // A fresh device of the same account: its own budget is untouched, the account's is spent.
    const fresh = tokens[devices] as string;
    const refused = await client.post(`/v1/blocks/${x.userId}`, undefined, fresh);
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(await blockedBy(fresh)).toEqual([]);
  }, 120_000);
});
