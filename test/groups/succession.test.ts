import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

type Person = Awaited<ReturnType<typeof registerAndLogin>>;

/** Issue 13 item 11: a group never loses its last admin; an empty group is deleted. */
describe("group succession", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** The admin invites `member`, who accepts (one at a time: join times differ). */
  async function join(groupId: string, admin: Person, member: Person) {
    const added = await client.post(
      `/v1/groups/${groupId}/members`,
      { userId: member.userId },
      admin.accessToken,
    );
    expect(added.status).toBe(204);
    const accepted = await client.post(`/v1/invitations/${groupId}/accept`, undefined, member.accessToken);
    expect(accepted.status).toBe(204);
  }

  async function groupWith(admin: Person, ...members: Person[]) {
    const created = await client.post("/v1/groups", { name: "g", members: [] }, admin.accessToken);
    expect(created.status).toBe(201);
    const { groupId } = created.body as { groupId: string };
    for (const member of members) await join(groupId, admin, member);
    return groupId;
  }

  async function groupRows(groupId: string) {
    const result = await node.database.db.execute(
      sql`select (select count(*) from groups where id = ${groupId})::int as groups,
                 (select count(*) from group_members where group_id = ${groupId})::int as members`,
    );
    return rowsOf<{ groups: number; members: number }>(result)[0];
  }

  async function erase(userId: string) {
    const res = await fetch(`${node.adminUrl}/admin/v1/users/${userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(202);
    const { erasureId } = (await res.json()) as { erasureId: string };
    await node.gdpr.erasures.settled(erasureId);
    const deadline = Date.now() + 30_000;
    while ((await client.get(`/v1/erasures/${erasureId}`)).body.status !== "done") {
      if (Date.now() > deadline) throw new Error("erasure did not finish");
      await Bun.sleep(50);
    }
  }

  test("the only admin leaving makes the longest-standing member admin, again and again; the last one out deletes the group", async () => {
    const [alice, carol, bob] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const groupId = await groupWith(alice, carol, bob);
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${alice.userId}`, alice.accessToken)).status,
    ).toBe(204);
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).body).toMatchObject({
      members: [carol.userId, bob.userId],
      admins: [carol.userId],
    });
    // The new admin can act as one.
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${carol.userId}`, carol.accessToken)).status,
    ).toBe(204);
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).body).toMatchObject({
      members: [bob.userId],
      admins: [bob.userId],
    });
    expect((await client.delete(`/v1/groups/${groupId}/members/${bob.userId}`, bob.accessToken)).status).toBe(
      204,
    );
    expect(await groupRows(groupId)).toEqual({ groups: 0, members: 0 });
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).status).toBe(404);
  });

  test("a member leaving or removed while an admin stays changes no role; a refused removal changes nothing", async () => {
    const [alice, bob, carol, eve] = await Promise.all([1, 2, 3, 4].map(() => registerAndLogin(client)));
    const groupId = await groupWith(alice, bob, carol);
    const refused = await client.delete(`/v1/groups/${groupId}/members/${alice.userId}`, eve.accessToken);
    expect(refused.status).toBe(403);
    expect(refused.body.error.code).toBe("forbidden");
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${eve.userId}`, alice.accessToken)).status,
    ).toBe(404);
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${bob.userId}`, alice.accessToken)).status,
    ).toBe(204);
    expect((await client.get(`/v1/groups/${groupId}`, carol.accessToken)).body).toMatchObject({
      members: [alice.userId, carol.userId],
      admins: [alice.userId],
    });
  });

  test("erasing the only admin makes the longest-standing member admin; erasing the only member deletes the group", async () => {
    const [dave, erin, frank] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const shared = await groupWith(dave, erin, frank);
    const alone = await groupWith(dave);
    await erase(dave.userId);
    expect((await client.get(`/v1/groups/${shared}`, frank.accessToken)).body).toMatchObject({
      members: [erin.userId, frank.userId],
      admins: [erin.userId],
    });
    expect(await groupRows(alone)).toEqual({ groups: 0, members: 0 });
    // The erasure's successor is recorded in the audit log, as a system action.
    const audit = await fetch(`${node.adminUrl}/admin/v1/audit?limit=1000`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const entries = ((await audit.json()) as { entries: { action: string; details: { groupId?: string } }[] })
      .entries;
    expect(entries.some((e) => e.action === "group.admin.promote" && e.details.groupId === shared)).toBe(
      true,
    );
    expect(entries.some((e) => e.action === "group.delete" && e.details.groupId === alone)).toBe(true);
  });
});
