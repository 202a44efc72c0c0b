import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { GROUP_CHANGE_LIMIT } from "../../src/groups/model.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Group changes had no budget while each is a transaction appending to the audit chain under its
 * cluster-wide lock: a loop of joins and leaves (or of refused declines) was free. Create, member
 * changes, accept and decline spend one budget per device and per account.
 */
describe("group changes: a per-device budget shared by every group route", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  async function memberships(userId: string): Promise<{ members: number; invitations: number }> {
    const result = await node.database.db.execute(
      sql`select (select count(*) from group_members where user_id = ${userId})::int as members,
                 (select count(*) from group_invitations where invited_by = ${userId})::int as invitations`,
    );
    return rowsOf<{ members: number; invitations: number }>(result)[0] ?? { members: -1, invitations: -1 };
  }

  test("past the budget every group route is 429 with Retry-After and changes nothing; bad input is still 400", async () => {
    const me = await registerAndLogin(client);
    const friend = await registerAndLogin(client);
    const created = await client.post("/v1/groups", { name: "ours", members: [] }, me.accessToken);
    expect(created.status).toBe(201);
    const groupId = created.body.groupId as string;
    // Refused changes spend too: declines of invitations that do not exist, in batches.
    for (let spent = 1; spent < GROUP_CHANGE_LIMIT.limit; ) {
      const batch = Math.min(50, GROUP_CHANGE_LIMIT.limit - spent);
      const answers = await Promise.all(
        Array.from({ length: batch }, () =>
          client.post(`/v1/invitations/${randomUUID()}/decline`, undefined, me.accessToken),
        ),
      );
      for (const res of answers) expect(res.status).not.toBe(429);
      spent += batch;
    }
    const before = await memberships(me.userId);
    for (const res of [
      await client.post("/v1/groups", { name: "one more", members: [friend.userId] }, me.accessToken),
      await client.post(`/v1/groups/${groupId}/members`, { userId: friend.userId }, me.accessToken),
      await client.delete(`/v1/groups/${groupId}/members/${me.userId}`, me.accessToken),
      await client.post(`/v1/invitations/${groupId}/accept`, undefined, me.accessToken),
    ]) {
      expect({ status: res.status, body: res.body }).toEqual({
        status: 429,
        body: { error: { code: "rate_limited", message: "too many group changes, retry later" } },
      });
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
    }
    expect(await memberships(me.userId)).toEqual(before);
    expect(before).toEqual({ members: 1, invitations: 0 });
    // Input the schema refuses is refused as before, without reaching the budget.
    expect((await client.post("/v1/groups", { name: "", members: [] }, me.accessToken)).status).toBe(400);
    // Reading is not a change; another device of the account and another account have budget left.
    expect((await client.get(`/v1/groups/${groupId}`, me.accessToken)).status).toBe(200);
    const second = await client.post("/v1/sessions", {
      username: me.username,
      password: me.password,
      registrationId: 4242,
    });
    expect(second.status).toBe(201);
    const invited = await client.post(
      `/v1/groups/${groupId}/members`,
      { userId: friend.userId },
      second.body.accessToken,
    );
    expect(invited.status).toBe(204);
    expect(
      (await client.post(`/v1/invitations/${groupId}/accept`, undefined, friend.accessToken)).status,
    ).toBe(204);
  }, 120_000);
});
