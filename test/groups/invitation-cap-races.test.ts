import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * The invitation caps count an invitee's pending invitations and then insert: on PostgreSQL, two
 * transactions counting at once (invitations through different groups, whose group locks do not
 * exclude each other) each saw room for one more. PGlite runs one transaction at a time, so this
 * runs on a PostgreSQL node.
 */
describe("invitation caps under concurrent invitations (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("one inviter inviting someone through 120 groups and 20 new ones at once leaves them 20 invitations; the rest are 409", async () => {
    const mallory = await registerAndLogin(client);
    const victim = await registerAndLogin(client);
    const groups: string[] = [];
    for (let i = 0; i < 120; i++) {
      const res = await client.post("/v1/groups", { name: `g${i}`, members: [] }, mallory.accessToken);
      expect(res.status).toBe(201);
      groups.push(res.body.groupId);
    }
    // Both ways of inviting at once: adding to existing groups, and creating groups that name them.
    const answers = await Promise.all([
      ...groups.map((g) =>
        client.post(`/v1/groups/${g}/members`, { userId: victim.userId }, mallory.accessToken),
      ),
      ...Array.from({ length: 20 }, (_, i) =>
        client.post("/v1/groups", { name: `new ${i}`, members: [victim.userId] }, mallory.accessToken),
      ),
    ]);
    const invitations = (await client.get("/v1/invitations", victim.accessToken)).body.invitations;
    expect(invitations).toHaveLength(20);
    const statuses = answers.map((a) => a.status);
    // Each invitation answered: 204 (added) or 201 (created), the others 409 and nothing stored.
    expect(statuses.filter((s) => s === 409)).toHaveLength(140 - 20);
    expect(statuses.filter((s) => s !== 409).every((s) => s === 201 || s === 204)).toBe(true);
    // A creation refused made no group (a 409 changes nothing).
    const created = answers.filter((a) => a.status === 201).length;
    const [row] = rowsOf<{ n: number }>(
      await node.database.db.execute(
        sql`select count(*)::int as n from group_members where user_id = ${mallory.userId}`,
      ),
    );
    expect(row?.n).toBe(120 + created);
  }, 120_000);

  test("six inviters inviting someone who holds 990 invitations, 120 at once, leave them 1,000; the rest are 409", async () => {
    const [victim, filler, ...inviters] = await Promise.all(
      Array.from({ length: 8 }, () => registerAndLogin(client)),
    );
    await node.database.db.execute(sql`
      with g as (insert into groups (name) select 'filler' from generate_series(1, 990) returning id)
      insert into group_invitations (group_id, user_id, invited_by)
      select id, ${victim?.userId}, ${filler?.userId} from g`);
    const groups: { token: string; groupId: string }[] = [];
    for (const inviter of inviters) {
      for (let i = 0; i < 20; i++) {
        const res = await client.post("/v1/groups", { name: `g${i}`, members: [] }, inviter.accessToken);
        expect(res.status).toBe(201);
        groups.push({ token: inviter.accessToken, groupId: res.body.groupId });
      }
    }
    const answers = await Promise.all(
      groups.map(({ token, groupId }) =>
        client.post(`/v1/groups/${groupId}/members`, { userId: victim?.userId }, token),
      ),
    );
    const [row] = rowsOf<{ n: number }>(
      await node.database.db.execute(
        sql`select count(*)::int as n from group_invitations where user_id = ${victim?.userId}`,
      ),
    );
    expect(row?.n).toBe(1000);
    expect(answers.filter((a) => a.status === 204)).toHaveLength(10);
    expect(answers.filter((a) => a.status === 409)).toHaveLength(110);
  }, 120_000);

  // The invitee locks are taken after the creator's account row and the group row; a creation also
  // takes its invitees' rows' KEY SHARE (foreign keys) under those locks. Two users creating groups
  // that name each other, at once, must both succeed rather than deadlock (a 500 for one of them).
  test("users creating groups that invite each other, 37 pairs at once, all succeed", async () => {
    const people = await Promise.all(Array.from({ length: 20 }, () => registerAndLogin(client)));
    const answers = await Promise.all(
      people.flatMap((a, i) =>
        people
          .slice(i + 1, i + 3)
          .flatMap((b) => [
            client.post("/v1/groups", { name: "ab", members: [b.userId] }, a.accessToken),
            client.post("/v1/groups", { name: "ba", members: [a.userId] }, b.accessToken),
          ]),
      ),
    );
    expect(answers).toHaveLength(74);
    expect(answers.map((a) => a.status).filter((s) => s !== 201)).toEqual([]);
  }, 120_000);
});
