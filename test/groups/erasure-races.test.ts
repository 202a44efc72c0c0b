import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, type Reply, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { untilLockWaiters } from "../support/postgres.ts";

/** The advisory lock class and bucket count of src/groups/invitee-lock.ts (invitations to a user). */
const INVITEE_LOCK_CLASS = 0x696e_7669;
const INVITEE_LOCK_BUCKETS = 256;

/**
 * A group made or joined by a user whose erasure is under way. The erasure read the user's
 * memberships before it took any lock, then deleted the account: a group creation (or an
 * acceptance) whose transaction held the account's row then committed in between was not among the
 * groups it read, so the cascade took the user's membership and no succession ran for that group.
 * A group made that way was left with no member and no admin, its invitations pending: whoever
 * accepted one joined a group nobody administers. The test holds the invitee's invitation lock in
 * its own transaction, so the creation waits there holding the creator's row, starts the erasure,
 * waits until the erasure waits too, and commits. And an invitation whose invitee is erased after
 * it checked they exist hit the foreign key: a 500, now a 404 as for any unknown user. PostgreSQL:
 * PGlite runs one transaction at a time.
 */
describe("groups and an erasure racing (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** Groups with no admin among their members (a group with no member at all included). */
  async function adminless(): Promise<string[]> {
    const rows = rowsOf<{ id: string }>(
      await node.database.db.execute(
        sql`select g.id from groups g where not exists (
              select 1 from group_members m where m.group_id = g.id and m.role = 'admin')`,
      ),
    );
    return rows.map((row) => row.id);
  }

  test("the erasure waits for the creation and removes the group it left empty", async () => {
    const [creator, invitee] = await Promise.all([registerAndLogin(client), registerAndLogin(client)]);
    const bucket = Number.parseInt(invitee.userId.slice(0, 8), 16) % INVITEE_LOCK_BUCKETS;
    let creating: Promise<Reply> | undefined;
    let erasureId = "";
    await node.database.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${INVITEE_LOCK_CLASS}, ${bucket}::int)`);
      creating = client.post(
        "/v1/groups",
        { name: "erased", members: [invitee.userId] },
        creator.accessToken,
      );
      // The creation holds the creator's account row and waits for the invitee's lock.
      await untilLockWaiters(node.database.db, 1);
      erasureId = await node.gdpr.erasures.start(creator.userId, "admin");
      // The erasure reaches the account and waits for the creation.
      await untilLockWaiters(node.database.db, 2);
    });
    const created = await (creating as Promise<Reply>);
    await node.gdpr.erasures.settled(erasureId);
    expect((await node.gdpr.erasures.status(erasureId))?.status).toBe("done");
    expect(await adminless()).toEqual([]);
    // The creation held the row first: it committed, then the erasure removed the group it left
    // empty, and the invitation with it.
    expect(created.status).toBe(201);
    expect((await client.get("/v1/invitations", invitee.accessToken)).body.invitations).toEqual([]);
    const joined = await client.post(
      `/v1/invitations/${created.body.groupId}/accept`,
      {},
      invitee.accessToken,
    );
    expect(joined.status).toBe(404);
    expect(await adminless()).toEqual([]);
  });

  test("an invitation to a user erased while it waited for the group is 404, not a 500", async () => {
    const [admin, invitee] = await Promise.all([registerAndLogin(client), registerAndLogin(client)]);
    const made = await client.post("/v1/groups", { name: "late", members: [] }, admin.accessToken);
    const { groupId } = made.body;
    let inviting: Promise<Reply> | undefined;
    await node.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from groups where id = ${groupId} for update`);
      inviting = client.post(`/v1/groups/${groupId}/members`, { userId: invitee.userId }, admin.accessToken);
      await untilLockWaiters(node.database.db, 1);
      // As the erasure's `postgres` step would, after the invitation checked the user exists.
      await tx.execute(sql`delete from accounts where id = ${invitee.userId}`);
    });
    const answer = await (inviting as Promise<Reply>);
    expect(answer.status).toBe(404);
    expect(answer.body.error.code).toBe("not_found");
  });
});
