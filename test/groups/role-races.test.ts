import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { untilLockWaiters } from "../support/postgres.ts";

type Session = Awaited<ReturnType<typeof registerAndLogin>>;

/**
 * An admin's invitation or removal checked the caller's role before taking the group's lock: an
 * admin who left (from their other device) or was removed by another admin while the call waited
 * for the lock still invited or removed as admin. The test holds the group's row lock in its own
 * transaction, lets the call pass its first check and wait for the lock, takes the caller's
 * membership away in that transaction, and commits. PostgreSQL: PGlite runs one transaction at a
 * time, so the call could not wait there.
 */
describe("group admin rights checked under the group's lock (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** A group made by `admin` with `member` in it (invited and accepted). */
  async function groupOf(admin: Session, member: Session): Promise<string> {
    const made = await client.post(
      "/v1/groups",
      { name: "races", members: [member.userId] },
      admin.accessToken,
    );
    expect(made.status).toBe(201);
    const { groupId } = made.body;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, {}, member.accessToken)).status).toBe(204);
    return groupId;
  }

  /**
   * Runs `call` while this test holds the group's row lock, and once `call` waits for it, takes
   * `admin` out of the group (as their leaving would: `other` becomes admin) and commits.
   */
  async function whileAdminLeaves<T>(
    groupId: string,
    admin: Session,
    other: Session,
    call: () => Promise<T>,
  ) {
    let pending: Promise<T> | undefined;
    await node.database.db.transaction(async (tx) => {
      await tx.execute(sql`select id from groups where id = ${groupId} for update`);
      pending = call();
      await untilLockWaiters(node.database.db, 1);
      await tx.execute(
        sql`delete from group_members where group_id = ${groupId} and user_id = ${admin.userId}`,
      );
      await tx.execute(
        sql`update group_members set role = 'admin' where group_id = ${groupId} and user_id = ${other.userId}`,
      );
    });
    return pending as Promise<T>;
  }

  test("an invitation by an admin who left while it waited is 403 and stores nothing", async () => {
    const [admin, member, invitee] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const groupId = await groupOf(admin, member);
    const answer = await whileAdminLeaves(groupId, admin, member, () =>
      client.post(`/v1/groups/${groupId}/members`, { userId: invitee.userId }, admin.accessToken),
    );
    expect(answer.status).toBe(403);
    expect((await client.get("/v1/invitations", invitee.accessToken)).body.invitations).toEqual([]);
  });

  test("a removal by an admin removed while it waited is 403 and removes nobody", async () => {
    const [admin, member, third] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const groupId = await groupOf(admin, member);
    expect(
      (await client.post(`/v1/groups/${groupId}/members`, { userId: third.userId }, admin.accessToken))
        .status,
    ).toBe(204);
    expect((await client.post(`/v1/invitations/${groupId}/accept`, {}, third.accessToken)).status).toBe(204);
    const answer = await whileAdminLeaves(groupId, admin, member, () =>
      client.delete(`/v1/groups/${groupId}/members/${third.userId}`, admin.accessToken),
    );
    expect(answer.status).toBe(403);
    const group = await client.get(`/v1/groups/${groupId}`, member.accessToken);
    expect(group.body.members).toContain(third.userId);
  });
});
