import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { MAX_BLOCKS } from "../../src/blocks/model.ts";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * MAX_BLOCKS is counted and then a block inserted: on PostgreSQL, transactions counting at once
 * each saw room for one more, so concurrent blocks passed the cap. PGlite runs one transaction at a
 * time, so this runs on a PostgreSQL node.
 */
describe("the block cap under concurrent blocks (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const blocksOf = async (userId: string) =>
    rowsOf<{ n: number }>(
      await node.database.db.execute(sql`select count(*)::int as n from blocks where user_id = ${userId}`),
    )[0]?.n;

  test("a user 5 short of the cap blocking 25 users at once blocks exactly 5; the rest are 409", async () => {
    const blocker = await registerAndLogin(client);
    const tag = randomUUID().slice(0, 8);
    // The cap less 5, filled directly: accounts to block, and the blocks.
    await node.database.db.execute(sql`
      with a as (
        insert into accounts (username, password_hash)
        select ${`cap${tag}_`} || i, null from generate_series(1, ${MAX_BLOCKS - 5}) as i
        returning id)
      insert into blocks (user_id, blocked_user_id) select ${blocker.userId}, id from a`);
    expect(await blocksOf(blocker.userId)).toBe(MAX_BLOCKS - 5);
    // 25 and one more below: within the device's block-change budget (BLOCK_CHANGE_LIMIT, 30).
    const targets = await Promise.all(Array.from({ length: 25 }, () => registerAndLogin(client)));

    const answers = await Promise.all(
      targets.map((t) => client.post(`/v1/blocks/${t.userId}`, undefined, blocker.accessToken)),
    );
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 204)).toHaveLength(5);
    expect(statuses.filter((s) => s === 409)).toHaveLength(20);
    expect(await blocksOf(blocker.userId)).toBe(MAX_BLOCKS);
    // Idempotent at the cap: blocking someone already blocked is still 204 and adds nothing.
    const blocked = targets[statuses.indexOf(204)];
    expect((await client.post(`/v1/blocks/${blocked?.userId}`, undefined, blocker.accessToken)).status).toBe(
      204,
    );
    expect(await blocksOf(blocker.userId)).toBe(MAX_BLOCKS);
  }, 120_000);

  test("a block racing invitations from the one blocked and an accept: none of theirs is left pending, nothing fails", async () => {
    const fromBlocked = async (blocker: string, blocked: string) =>
      rowsOf<{ n: number }>(
        await node.database.db.execute(
          sql`select count(*)::int as n from group_invitations where user_id = ${blocker} and invited_by = ${blocked}`,
        ),
      )[0]?.n;
    const statuses = new Set<number>();
    let left = 0;
    for (let round = 0; round < 20; round++) {
      const inviter = await registerAndLogin(client);
      const invitee = await registerAndLogin(client);
      const created = await client.post(
        "/v1/groups",
        { name: "g", members: [invitee.userId] },
        inviter.accessToken,
      );
      const answers = await Promise.all([
        client.post(`/v1/blocks/${inviter.userId}`, undefined, invitee.accessToken),
        client.post(`/v1/invitations/${created.body.groupId}/accept`, undefined, invitee.accessToken),
        ...Array.from({ length: 5 }, () =>
          client.post("/v1/groups", { name: "g", members: [invitee.userId] }, inviter.accessToken),
        ),
      ]);
      for (const a of answers) statuses.add(a.status);
      left += (await fromBlocked(invitee.userId, inviter.userId)) ?? 0;
    }
    // Read before the block committed, an invitation was written after its delete (27 of 30 rounds).
    expect(left).toBe(0);
    expect([...statuses].every((s) => s < 500)).toBe(true);
  }, 300_000);
});
