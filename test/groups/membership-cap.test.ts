import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { MAX_GROUPS_PER_USER } from "../../src/groups/model.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Nothing else bounds what `POST /v1/groups` stores: each call is a group row and a member row, so
 * one account looping on it grew the database without end. An account is a member of at most
 * MAX_GROUPS_PER_USER groups, whether it made them or accepted an invitation.
 */
describe("groups one account can be a member of", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  async function counts() {
    const result = await node.database.db.execute(
      sql`select (select count(*) from groups)::int as groups,
                 (select count(*) from group_members)::int as members,
                 (select count(*) from group_invitations)::int as invitations`,
    );
    return rowsOf<{ groups: number; members: number; invitations: number }>(result)[0];
  }

  test("creating or joining one group past the cap is 409 conflict and changes nothing; leaving one makes room", async () => {
    const [alice, bob] = [await registerAndLogin(client), await registerAndLogin(client)];
    // Fixtures written straight into the tables: Alice in one group fewer than the cap.
    await node.database.db.execute(sql`
      with g as (insert into groups (name) select 'filler' from generate_series(1, ${MAX_GROUPS_PER_USER - 1}) returning id)
      insert into group_members (group_id, user_id, role) select id, ${alice.userId}, 'admin' from g`);
    const last = await client.post("/v1/groups", { name: "the last one", members: [] }, alice.accessToken);
    expect(last.status).toBe(201);
    // Bob invites her before she is full; she can no longer accept it.
    const bobs = await client.post("/v1/groups", { name: "bob's", members: [alice.userId] }, bob.accessToken);
    expect(bobs.status).toBe(201);
    const before = await counts();
    const refusals = [
      await client.post("/v1/groups", { name: "one more", members: [bob.userId] }, alice.accessToken),
      await client.post(`/v1/invitations/${bobs.body.groupId}/accept`, undefined, alice.accessToken),
    ];
    for (const res of refusals) {
      expect({ status: res.status, code: res.body.error.code }).toEqual({ status: 409, code: "conflict" });
      expect(res.body.error.message).toContain(`at most ${MAX_GROUPS_PER_USER.toLocaleString("en")} groups`);
    }
    expect(await counts()).toEqual(before);
    // The invitation is still there, and accepted once she left a group.
    const left = await client.delete(
      `/v1/groups/${last.body.groupId}/members/${alice.userId}`,
      alice.accessToken,
    );
    expect(left.status).toBe(204);
    const accepted = await client.post(
      `/v1/invitations/${bobs.body.groupId}/accept`,
      undefined,
      alice.accessToken,
    );
    expect(accepted.status).toBe(204);
    // Another account is not affected.
    const other = await client.post("/v1/groups", { name: "bob's second", members: [] }, bob.accessToken);
    expect(other.status).toBe(201);
  }, 120_000);
});
