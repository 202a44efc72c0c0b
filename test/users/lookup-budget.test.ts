import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { USER_LOOKUP_ACCOUNT_LIMIT, USER_LOOKUP_LIMIT } from "../../src/users/index.ts";
import { type Api, api, registerAndLogin, uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Devices cost nothing but a login (127 per account), so a budget per device alone multiplies:
 * an account walking the directory from every device it can make would get 127 × 30 lookups a
 * minute. The account's own budget caps the sum.
 */
describe("user lookups: the account's budget caps what its devices spend together", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
  });

  test("another device past the account's budget is refused (429), having looked nothing up", async () => {
    const target = await registerAndLogin(client);
    const prober = await registerAndLogin(client);
    const perDevice = USER_LOOKUP_LIMIT.limit;
    const devicesWithinBudget = Math.floor(USER_LOOKUP_ACCOUNT_LIMIT.limit / perDevice);
    // The account's budget is whole devices' worth, so each device below spends its own to the end.
    expect(devicesWithinBudget * perDevice).toBe(USER_LOOKUP_ACCOUNT_LIMIT.limit);
    const tokens = [prober.accessToken];
    while (tokens.length <= devicesWithinBudget) {
      const login = await client.post("/v1/sessions", {
        username: prober.username,
        password: prober.password,
        registrationId: 4242,
      });
      expect(login.status).toBe(201);
      tokens.push(login.body.accessToken);
    }
    for (const token of tokens.slice(0, devicesWithinBudget)) {
      for (let i = 0; i < perDevice; i++) {
        const miss = await client.get(`/v1/users?username=${uniqueUsername("nobody")}`, token);
        expect(miss.status).toBe(404);
      }
    }
    // A fresh device of the same account: its own budget is untouched, the account's is spent.
    const fresh = tokens[devicesWithinBudget];
    const refused = await client.get(`/v1/users?username=${target.username}`, fresh);
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(JSON.stringify(refused.body)).not.toContain(target.userId);
    const byId = await client.get(`/v1/users/${target.userId}`, fresh);
    expect(byId.status).toBe(429);
    // Another account keeps its own budget.
    const other = await registerAndLogin(client);
    const found = await client.get(`/v1/users?username=${target.username}`, other.accessToken);
    expect(found.status).toBe(200);
    expect(found.body.userId).toBe(target.userId);
    expect(node.logs.join("")).not.toContain(target.username);
  }, 120_000);
});
