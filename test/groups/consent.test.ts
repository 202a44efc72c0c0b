import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { ClearBoxApiError, ClearBoxClient } from "../../src/client/index.ts";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, registerAndLogin, uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

type Person = Awaited<ReturnType<typeof registerAndLogin>>;
const b64 = (text: string) => Buffer.from(text).toString("base64");

/** Issue 13 item 7: group membership needs consent (invitations), and users can block each other. */
describe("invitations and blocks", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const people = (n: number) => Promise.all(Array.from({ length: n }, () => registerAndLogin(client)));
  const invitations = async (p: Person) =>
    (await client.get("/v1/invitations", p.accessToken)).body.invitations;
  const accept = (groupId: string, p: Person) =>
    client.post(`/v1/invitations/${groupId}/accept`, undefined, p.accessToken);
  const decline = (groupId: string, p: Person) =>
    client.post(`/v1/invitations/${groupId}/decline`, undefined, p.accessToken);
  async function createGroup(admin: Person, members: Person[], name = "g") {
    const res = await client.post(
      "/v1/groups",
      { name, members: members.map((m) => m.userId) },
      admin.accessToken,
    );
    expect(res.status).toBe(201);
    return res.body.groupId as string;
  }
  /** Rows of the consent tables, to show a refusal changed nothing. */
  async function consentRows() {
    const result = await node.database.db.execute(
      sql`select (select count(*) from group_invitations)::int as invitations,
                 (select count(*) from group_members)::int as members,
                 (select count(*) from blocks)::int as blocks`,
    );
    return rowsOf<{ invitations: number; members: number; blocks: number }>(result)[0];
  }
  const logged = async (userId: string, id: string) =>
    (await node.log.metadataOf(userId)).some((m) => m.id === id && m.recipientUser === userId);

  test("POST /v1/groups invites its members: until they accept they get no group message, are not listed, and cannot send", async () => {
    const [alice, bob, carol] = await people(3);
    const groupId = await createGroup(alice, [bob, carol], "team");
    expect(await invitations(bob)).toEqual([
      { groupId, name: "team", invitedBy: alice.userId, invitedAt: expect.any(Number) },
    ]);
    expect((await client.get(`/v1/groups/${groupId}`, alice.accessToken)).body).toMatchObject({
      members: [alice.userId],
      admins: [alice.userId],
    });
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).status).toBe(403);

    // Carol accepts, Bob does not (yet): a group send reaches Carol only; Bob is not in the fan-out.
    expect((await accept(groupId, carol)).status).toBe(204);
    const [a, b, c] = await Promise.all(
      [alice, bob, carol].map((p) => TestSocket.open(node.url, p.accessToken)),
    );
    const before = randomUUID();
    a.send({ type: "send", id: before, to: { group: groupId }, message: { type: 7, body: b64("before") } });
    expect((await a.reply(before)).type).toBe("accepted");
    expect((await c.messages(1))[0]).toMatchObject({ id: before, group: groupId });
    expect(await logged(bob.userId, before)).toBe(false);
    // An invitee cannot send to the group either.
    const fromBob = randomUUID();
    b.send({ type: "send", id: fromBob, to: { group: groupId }, message: { type: 7, body: b64("x") } });
    expect(await b.reply(fromBob)).toMatchObject({ type: "rejected", code: "not_member" });

    // Bob accepts: listed, and the next send reaches him (the earlier one never does).
    expect((await accept(groupId, bob)).status).toBe(204);
    expect(await invitations(bob)).toEqual([]);
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).body.members).toEqual([
      alice.userId,
      carol.userId,
      bob.userId,
    ]);
    const after = randomUUID();
    a.send({ type: "send", id: after, to: { group: groupId }, message: { type: 7, body: b64("after") } });
    expect((await a.reply(after)).type).toBe("accepted");
    expect((await b.messages(1))[0]).toMatchObject({ id: after, group: groupId });
    expect(b.pendingMessages()).toEqual([]);
    await Promise.all([a, b, c].map((s) => s.close()));
  });

  test("an admin's add is an invitation too: declined, it is gone; withdrawn by the admin, likewise", async () => {
    const [alice, carol, dave] = await people(3);
    const groupId = await createGroup(alice, []);
    for (const p of [carol, dave]) {
      expect(
        (await client.post(`/v1/groups/${groupId}/members`, { userId: p.userId }, alice.accessToken)).status,
      ).toBe(204);
    }
    // Inviting again changes nothing: still one invitation each.
    expect(
      (await client.post(`/v1/groups/${groupId}/members`, { userId: carol.userId }, alice.accessToken))
        .status,
    ).toBe(204);
    expect(await invitations(carol)).toHaveLength(1);
    expect((await decline(groupId, carol)).status).toBe(204);
    expect(await invitations(carol)).toEqual([]);
    const again = await decline(groupId, carol);
    expect(again.status).toBe(404);
    expect(again.body.error.code).toBe("not_found");
    expect((await accept(groupId, carol)).status).toBe(404);
    // The admin withdraws Dave's invitation.
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${dave.userId}`, alice.accessToken)).status,
    ).toBe(204);
    expect(await invitations(dave)).toEqual([]);
    expect((await client.get(`/v1/groups/${groupId}`, alice.accessToken)).body.members).toEqual([
      alice.userId,
    ]);
  });

  test("refused invitation calls answer a protocol code and change nothing", async () => {
    const [alice, bob, eve] = await people(3);
    const groupId = await createGroup(alice, [bob]);
    const rows = await consentRows();
    const refusals: [Promise<{ status: number; body: any }>, number, string][] = [
      // Only admins invite; members of nothing neither.
      [
        client.post(`/v1/groups/${groupId}/members`, { userId: eve.userId }, bob.accessToken),
        403,
        "forbidden",
      ],
      [
        client.post(`/v1/groups/${groupId}/members`, { userId: randomUUID() }, alice.accessToken),
        404,
        "not_found",
      ],
      [
        client.post(`/v1/groups/${randomUUID()}/members`, { userId: eve.userId }, alice.accessToken),
        404,
        "not_found",
      ],
      // Someone else's invitation cannot be accepted or declined.
      [accept(groupId, eve), 404, "not_found"],
      [decline(groupId, eve), 404, "not_found"],
      [client.post(`/v1/invitations/${randomUUID()}/accept`, undefined, bob.accessToken), 404, "not_found"],
      [client.post("/v1/invitations/not-a-uuid/accept", undefined, bob.accessToken), 400, "invalid"],
      [client.post(`/v1/invitations/${groupId}/accept`), 401, "unauthorized"],
      // An invitee is no member: it cannot withdraw others' invitations.
      [client.delete(`/v1/groups/${groupId}/members/${alice.userId}`, bob.accessToken), 403, "forbidden"],
    ];
    for (const [call, status, code] of refusals) {
      const res = await call;
      expect({ status: res.status, code: res.body.error.code }).toEqual({ status, code });
    }
    expect(await consentRows()).toEqual(rows);
    expect(await invitations(bob)).toHaveLength(1);
    expect((await client.get("/v1/invitations")).status).toBe(401);
  });

  test("a blocked user's 1:1 sends are answered accepted and reach nobody; other senders are unaffected; unblocking restores", async () => {
    const [alice, bob, carol] = await people(3);
    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    const [a, b, c] = await Promise.all(
      [alice, bob, carol].map((p) => TestSocket.open(node.url, p.accessToken)),
    );
    const direct = (id: string, text: string) => ({
      type: "send",
      id,
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body: b64(text) }],
    });
    const blocked = randomUUID();
    a.send(direct(blocked, "blocked"));
    expect(await a.reply(blocked)).toMatchObject({ type: "accepted", id: blocked });
    // The device check still runs first, as for any recipient (nothing more is revealed either way).
    const wrong = randomUUID();
    a.send({ ...direct(wrong, "x"), messages: [{ deviceId: 9, type: 3, body: b64("x") }] });
    expect(await a.reply(wrong)).toMatchObject({ type: "rejected", code: "mismatched_devices" });
    const fromCarol = randomUUID();
    c.send(direct(fromCarol, "carol"));
    expect((await c.reply(fromCarol)).type).toBe("accepted");
    expect((await b.messages(1))[0]).toMatchObject({ id: fromCarol });
    expect(b.pendingMessages()).toEqual([]);
    expect(await logged(bob.userId, blocked)).toBe(false);
    // Bob can still write to Alice: a block is one way.
    const reply = randomUUID();
    b.send({
      type: "send",
      id: reply,
      to: { user: alice.userId },
      messages: [{ deviceId: 1, type: 3, body: b64("r") }],
    });
    expect((await b.reply(reply)).type).toBe("accepted");
    expect((await a.messages(1))[0]).toMatchObject({ id: reply });

    expect((await client.delete(`/v1/blocks/${alice.userId}`, bob.accessToken)).status).toBe(204);
    const afterUnblock = randomUUID();
    a.send(direct(afterUnblock, "again"));
    expect((await a.reply(afterUnblock)).type).toBe("accepted");
    expect((await b.messages(1))[0]).toMatchObject({ id: afterUnblock });
    await Promise.all([a, b, c].map((s) => s.close()));
  });

  test("a recipient who blocks more users than are cached with their devices still drops the blocked sender's sends", async () => {
    const [dave, alice, erin] = await people(3);
    const tag = randomUUID().slice(0, 8);
    // 65 blocks (one more than the 64 cached with the device list), then Alice through the API.
    await node.database.db.execute(sql`
      insert into accounts (username) select ${`b${tag}_`} || i from generate_series(1, 65) as i`);
    await node.database.db.execute(sql`
      insert into blocks (user_id, blocked_user_id)
      select ${dave.userId}, id from accounts where username like ${`b${tag}_%`}`);
    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, dave.accessToken)).status).toBe(204);
    const [a, d, e] = await Promise.all(
      [alice, dave, erin].map((p) => TestSocket.open(node.url, p.accessToken)),
    );
    const to = (id: string) => ({
      type: "send",
      id,
      to: { user: dave.userId },
      messages: [{ deviceId: 1, type: 3, body: b64(id) }],
    });
    const dropped = randomUUID();
    a.send(to(dropped));
    expect((await a.reply(dropped)).type).toBe("accepted");
    const delivered = randomUUID();
    e.send(to(delivered));
    expect((await e.reply(delivered)).type).toBe("accepted");
    expect((await d.messages(1))[0]).toMatchObject({ id: delivered });
    expect(d.pendingMessages()).toEqual([]);
    expect(await logged(dave.userId, dropped)).toBe(false);
    await Promise.all([a, d, e].map((s) => s.close()));
  });

  test("a blocked user cannot invite the blocker (silently), loses pending invitations to them, and their group messages skip the blocker", async () => {
    const [alice, bob, carol] = await people(3);
    const earlier = await createGroup(alice, [bob], "before the block");
    const shared = await createGroup(carol, [alice, bob], "shared");
    for (const p of [alice, bob]) expect((await accept(shared, p)).status).toBe(204);
    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    // Pending invitations from Alice to Bob went with the block; new ones are answered as usual and dropped.
    expect((await invitations(bob)).map((i: { groupId: string }) => i.groupId)).not.toContain(earlier);
    const later = await createGroup(alice, [bob], "after the block");
    expect(
      (await client.post(`/v1/groups/${earlier}/members`, { userId: bob.userId }, alice.accessToken)).status,
    ).toBe(204);
    expect(await invitations(bob)).toEqual([]);
    expect((await client.get(`/v1/groups/${later}`, alice.accessToken)).body.members).toEqual([alice.userId]);
    // Someone else may still invite Bob.
    await createGroup(carol, [bob], "carol's");
    expect(await invitations(bob)).toHaveLength(1);

    // In the group they share, Alice's messages reach Carol and not Bob; Carol's reach both.
    const [a, b, c] = await Promise.all(
      [alice, bob, carol].map((p) => TestSocket.open(node.url, p.accessToken)),
    );
    const fromAlice = randomUUID();
    a.send({ type: "send", id: fromAlice, to: { group: shared }, message: { type: 7, body: b64("a") } });
    expect((await a.reply(fromAlice)).type).toBe("accepted");
    expect((await c.messages(1))[0]).toMatchObject({ id: fromAlice });
    const fromCarol = randomUUID();
    c.send({ type: "send", id: fromCarol, to: { group: shared }, message: { type: 7, body: b64("c") } });
    expect((await c.reply(fromCarol)).type).toBe("accepted");
    expect((await b.messages(1))[0]).toMatchObject({ id: fromCarol });
    expect((await a.messages(1))[0]).toMatchObject({ id: fromCarol });
    expect(b.pendingMessages()).toEqual([]);
    expect(await logged(bob.userId, fromAlice)).toBe(false);
    await Promise.all([a, b, c].map((s) => s.close()));
  });

  test("the block list: idempotent adds and removals, listed oldest first; refusals change nothing", async () => {
    const [me, x, y] = await people(3);
    for (const p of [x, y, x]) {
      expect((await client.post(`/v1/blocks/${p.userId}`, undefined, me.accessToken)).status).toBe(204);
    }
    const listed = (await client.get("/v1/blocks", me.accessToken)).body.blocks;
    expect(listed.map((b: { userId: string }) => b.userId)).toEqual([x.userId, y.userId]);
    expect(listed[0].blockedAt).toBeGreaterThan(0);
    const rows = await consentRows();
    const refusals: [Promise<{ status: number; body: any }>, number, string][] = [
      [client.post(`/v1/blocks/${me.userId}`, undefined, me.accessToken), 400, "invalid"],
      [client.post(`/v1/blocks/${randomUUID()}`, undefined, me.accessToken), 404, "not_found"],
      [client.post("/v1/blocks/not-a-uuid", undefined, me.accessToken), 400, "invalid"],
      [client.post(`/v1/blocks/${x.userId}`), 401, "unauthorized"],
      [client.delete(`/v1/blocks/${x.userId}`), 401, "unauthorized"],
    ];
    for (const [call, status, code] of refusals) {
      const res = await call;
      expect({ status: res.status, code: res.body.error.code }).toEqual({ status, code });
    }
    expect(await consentRows()).toEqual(rows);
    for (let i = 0; i < 2; i++) {
      expect((await client.delete(`/v1/blocks/${x.userId}`, me.accessToken)).status).toBe(204);
    }
    expect(
      (await client.get("/v1/blocks", me.accessToken)).body.blocks.map((b: { userId: string }) => b.userId),
    ).toEqual([y.userId]);
  });

  test("the export lists invitations received and sent and the users one blocks, never who blocks one", async () => {
    const [me, friend, other] = await people(3);
    const toMe = await createGroup(friend, [me], "for me");
    const fromMe = await createGroup(me, [other], "from me");
    expect((await client.post(`/v1/blocks/${other.userId}`, undefined, me.accessToken)).status).toBe(204);
    expect((await client.post(`/v1/blocks/${me.userId}`, undefined, friend.accessToken)).status).toBe(204);
    const archive = (await client.get("/v1/me/export", me.accessToken)).body;
    expect(archive.invitations.received).toEqual([
      { groupId: toMe, name: "for me", invitedBy: friend.userId, invitedAt: expect.any(String) },
    ]);
    expect(archive.invitations.sent).toEqual([
      { groupId: fromMe, invitee: other.userId, invitedAt: expect.any(String) },
    ]);
    expect(archive.blocks).toEqual([{ userId: other.userId, blockedAt: expect.any(String) }]);
    expect(JSON.stringify(archive.blocks)).not.toContain(friend.userId);
  });

  test("the limits: 1,000 pending invitations per invitee, 10,000 members and invitations per group, 10,000 blocks; each refusal is 409 and changes nothing", async () => {
    const [alice, bob, carol] = await people(3);
    const db = node.database.db;
    const tag = randomUUID().slice(0, 8);
    // Fixtures written straight into the tables: 1,000 invitations for Bob from as many groups,
    // and 10,000 accounts to fill a group's invitations and Carol's block list.
    await db.execute(sql`
      with g as (insert into groups (name) select 'filler' from generate_series(1, 1000) returning id)
      insert into group_invitations (group_id, user_id, invited_by) select id, ${bob.userId}, ${carol.userId} from g`);
    await db.execute(sql`
      insert into accounts (username) select ${`f${tag}_`} || i from generate_series(1, 10000) as i`);
    const full = await createGroup(alice, []);
    await db.execute(sql`
      insert into group_invitations (group_id, user_id, invited_by)
      select ${full}, id, ${alice.userId} from accounts where username like ${`f${tag}_%`} limit 9999`);
    await db.execute(sql`
      insert into blocks (user_id, blocked_user_id)
      select ${carol.userId}, id from accounts where username like ${`f${tag}_%`}`);
    const rows = await consentRows();
    const groupCount = async () =>
      rowsOf<{ n: number }>(await db.execute(sql`select count(*)::int as n from groups`))[0].n;
    const groupsBefore = await groupCount();
    const refusals: [Promise<{ status: number; body: any }>, string][] = [
      [
        client.post("/v1/groups", { name: "one more", members: [bob.userId] }, alice.accessToken),
        "1000 pending",
      ],
      [
        client.post(`/v1/groups/${full}/members`, { userId: carol.userId }, alice.accessToken),
        "10000 members and pending invitations",
      ],
      [client.post(`/v1/blocks/${alice.userId}`, undefined, carol.accessToken), "blocks at most 10000"],
    ];
    for (const [call, what] of refusals) {
      const res = await call;
      expect({ what, status: res.status, code: res.body.error.code }).toEqual({
        what,
        status: 409,
        code: "conflict",
      });
      expect(res.body.error.message.replaceAll(",", "")).toContain(what.split(" ").slice(-2).join(" "));
    }
    expect(await consentRows()).toEqual(rows);
    expect(await groupCount()).toBe(groupsBefore);
    // At the limit, what changes nothing is still answered as usual: re-blocking, re-inviting.
    const blocked = rowsOf<{ id: string }>(
      await db.execute(sql`select blocked_user_id as id from blocks where user_id = ${carol.userId} limit 1`),
    )[0].id;
    expect((await client.post(`/v1/blocks/${blocked}`, undefined, carol.accessToken)).status).toBe(204);
    expect(await consentRows()).toEqual(rows);
  }, 120_000);

  test("one inviter holds at most 20 of someone's pending invitations, by creating groups or by inviting; others still can invite them", async () => {
    const [mallory, victim, friend] = await people(3);
    // 20 groups of Mallory's, each inviting the victim, through the API.
    const groups: string[] = [];
    for (let i = 0; i < 20; i++) groups.push(await createGroup(mallory, [victim], `spam ${i}`));
    expect(await invitations(victim)).toHaveLength(20);
    const rows = await consentRows();
    const spare = await createGroup(mallory, []);
    const refusals = [
      await client.post("/v1/groups", { name: "one more", members: [victim.userId] }, mallory.accessToken),
      await client.post(`/v1/groups/${spare}/members`, { userId: victim.userId }, mallory.accessToken),
    ];
    for (const res of refusals) {
      expect({ status: res.status, code: res.body.error.code }).toEqual({ status: 409, code: "conflict" });
      expect(res.body.error.message).toContain("20 pending invitations from the same inviter");
    }
    // The refused creation made no group; nothing else changed.
    expect(await consentRows()).toEqual({ ...rows, members: rows.members + 1 });
    expect(await invitations(victim)).toHaveLength(20);
    // Someone else still can; and once the victim declines one of Mallory's, Mallory can again.
    await createGroup(friend, [victim]);
    expect((await decline(groups[0] as string, victim)).status).toBe(204);
    const again = await client.post(
      `/v1/groups/${spare}/members`,
      { userId: victim.userId },
      mallory.accessToken,
    );
    expect(again.status).toBe(204);
    expect(await invitations(victim)).toHaveLength(21);
  });

  test("the SDK's invitation and block methods", async () => {
    const open = async () => {
      const sdk = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
      await sdk.register(uniqueUsername("sdk"), "correct horse battery");
      return sdk;
    };
    const [owner, guest] = [await open(), await open()];
    const first = await owner.http.createGroup({ name: "first", members: [guest.userId as string] });
    const second = await owner.http.createGroup({ name: "second", members: [] });
    await owner.http.addGroupMember(second.groupId, guest.userId as string);
    expect((await guest.http.invitations()).map((i) => i.name)).toEqual(["first", "second"]);
    await guest.http.acceptInvitation(first.groupId);
    await guest.http.declineInvitation(second.groupId);
    expect(await guest.http.invitations()).toEqual([]);
    expect((await owner.http.group(first.groupId)).members).toEqual([owner.userId, guest.userId]);
    const refused = await guest.http.acceptInvitation(second.groupId).catch((e) => e);
    expect(refused).toBeInstanceOf(ClearBoxApiError);
    expect(refused).toMatchObject({ status: 404, code: "not_found" });
    await guest.http.block(owner.userId as string);
    expect((await guest.http.blocks()).map((b) => b.userId)).toEqual([owner.userId]);
    await guest.http.unblock(owner.userId as string);
    expect(await guest.http.blocks()).toEqual([]);
    owner.close();
    guest.close();
  });
});
