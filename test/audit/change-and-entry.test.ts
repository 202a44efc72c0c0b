import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { validUpload } from "../keys/fixtures.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/**
 * Group, device and key changes and their audit entries: both or neither. They were audited after
 * their transaction had committed, so a node that died in between (or an audit write that failed)
 * left a change the tamper-evident log never heard of. Here the audit write fails for real: a
 * trigger on `audit_log` refuses the actions named in a table, and each change must then be
 * refused whole (500, nothing changed); once the trigger lets it through, the change and its entry
 * are both there.
 */
describe.each(BACKENDS)("a change and its audit entry on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // A failed erasure step is retried 50 ms later (the erasure test below).
    node = await startTestNode(backend, { erasureRetryBaseMs: 50 });
    client = api(node.url);
    await node.database.db.execute(sql`create table cbt_auditx_refused (action text primary key)`);
    await node.database.db.execute(sql`create sequence cbt_auditx_refusals`);
    await node.database.db.execute(sql`
      create function cbt_auditx_refuse() returns trigger language plpgsql as $$
      begin
        if exists (select 1 from cbt_auditx_refused where action = new.action) then
          perform nextval('cbt_auditx_refusals'); -- not rolled back: the test counts refusals
          raise exception 'audit write refused by the test';
        end if;
        return new;
      end $$`);
    await node.database.db.execute(sql`
      create trigger cbt_auditx_refuse before insert on audit_log
      for each row execute function cbt_auditx_refuse()`);
  });
  afterAll(() => node?.teardown());

  async function refuse(action: string | undefined): Promise<void> {
    await node.database.db.execute(sql`delete from cbt_auditx_refused`);
    if (action) await node.database.db.execute(sql`insert into cbt_auditx_refused values (${action})`);
  }

  async function count(query: ReturnType<typeof sql>): Promise<number> {
    const [row] = rowsOf<{ n: number }>(await node.database.db.execute(query));
    return Number(row?.n ?? 0);
  }

  const entries = (action: string) =>
    count(sql`select count(*)::int as n from audit_log where action = ${action}`);
  const memberships = (userId: string) =>
    count(sql`select count(*)::int as n from group_members where user_id = ${userId}`);
  const invitations = (userId: string) =>
    count(sql`select count(*)::int as n from group_invitations where user_id = ${userId}`);

  test("group.create: a refused entry creates no group and invites nobody", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const before = await entries("group.create");
    await refuse("group.member.invite"); // the second of the two entries
    const refused = await client.post("/v1/groups", { name: "t", members: [bob.userId] }, alice.accessToken);
    expect(refused.status).toBe(500);
    expect(await memberships(alice.userId)).toBe(0);
    expect(await invitations(bob.userId)).toBe(0);
    expect(await entries("group.create")).toBe(before);

    await refuse(undefined);
    const made = await client.post("/v1/groups", { name: "t", members: [bob.userId] }, alice.accessToken);
    expect(made.status).toBe(201);
    expect(await memberships(alice.userId)).toBe(1);
    expect(await invitations(bob.userId)).toBe(1);
    expect(await entries("group.create")).toBe(before + 1);
  });

  test("invite, accept, remove, withdraw and decline: a refused entry changes nothing", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const carol = await registerAndLogin(client);
    await refuse(undefined);
    const { groupId } = (
      await client.post("/v1/groups", { name: "t", members: [bob.userId] }, alice.accessToken)
    ).body;
    const members = `/v1/groups/${groupId}/members`;

    await refuse("group.member.invite");
    expect((await client.post(members, { userId: carol.userId }, alice.accessToken)).status).toBe(500);
    expect(await invitations(carol.userId)).toBe(0);

    await refuse("group.member.join");
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      500,
    );
    expect(await memberships(bob.userId)).toBe(0);
    expect(await invitations(bob.userId)).toBe(1);
    await refuse(undefined);
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    expect(await memberships(bob.userId)).toBe(1);

    await refuse("group.member.remove");
    expect((await client.delete(`${members}/${bob.userId}`, alice.accessToken)).status).toBe(500);
    expect(await memberships(bob.userId)).toBe(1);

    await refuse(undefined);
    expect((await client.post(members, { userId: carol.userId }, alice.accessToken)).status).toBe(204);
    await refuse("group.invitation.withdraw");
    expect((await client.delete(`${members}/${carol.userId}`, alice.accessToken)).status).toBe(500);
    expect(await invitations(carol.userId)).toBe(1);

    await refuse("group.invitation.decline");
    expect(
      (await client.post(`/v1/invitations/${groupId}/decline`, undefined, carol.accessToken)).status,
    ).toBe(500);
    expect(await invitations(carol.userId)).toBe(1);
    await refuse(undefined);
    const declines = await entries("group.invitation.decline");
    expect(
      (await client.post(`/v1/invitations/${groupId}/decline`, undefined, carol.accessToken)).status,
    ).toBe(204);
    expect(await invitations(carol.userId)).toBe(0);
    expect(await entries("group.invitation.decline")).toBe(declines + 1);
  });

  test("session.login: a refused entry leaves no device, and no device.remove entry for one never audited", async () => {
    // The device was created in a transaction of its own and removed again (with a `device.remove`
    // entry) when the login's entry was refused: the trail said a device was removed whose creation
    // it never recorded.
    const alice = await registerAndLogin(client);
    const devicesOf = () =>
      count(sql`select count(*)::int as n from devices where user_id = ${alice.userId}`);
    const logins = await entries("session.login");
    const removals = await entries("device.remove");
    await refuse("session.login");
    const refused = await client.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      registrationId: 32,
    });
    expect(refused.status).toBe(500);
    expect(await devicesOf()).toBe(1);
    expect(await entries("device.remove")).toBe(removals);
    expect(
      await count(sql`select count(*)::int as n from device_removals where user_id = ${alice.userId}`),
    ).toBe(0);

    await refuse(undefined);
    const phone = await loginDevice(client, alice, { registrationId: 32 });
    expect(phone.deviceId).toBe(2);
    expect(await devicesOf()).toBe(2);
    expect(await entries("session.login")).toBe(logins + 1);
    expect(await entries("device.remove")).toBe(removals);
  });

  test("device.remove: a refused entry removes no device", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 31 });
    await refuse("device.remove");
    expect((await client.delete(`/v1/devices/${phone.deviceId}`, alice.accessToken)).status).toBe(500);
    const listed = (await client.get("/v1/devices", alice.accessToken)).body.devices.map(
      (d: { deviceId: number }) => d.deviceId,
    );
    expect(listed).toContain(phone.deviceId);
    expect(
      await count(sql`select count(*)::int as n from device_removals where user_id = ${alice.userId}`),
    ).toBe(0);

    await refuse(undefined);
    const removals = await entries("device.remove");
    expect((await client.delete(`/v1/devices/${phone.deviceId}`, alice.accessToken)).status).toBe(204);
    expect(await entries("device.remove")).toBe(removals + 1);
  });

  test("erasure: a refused succession entry erases nothing until it is written, then both are there", async () => {
    const [dave, erin] = await Promise.all([1, 2].map(() => registerAndLogin(client)));
    await refuse(undefined);
    const { groupId } = (
      await client.post("/v1/groups", { name: "s", members: [erin.userId] }, dave.accessToken)
    ).body;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, erin.accessToken)).status).toBe(
      204,
    );
    const promotions = await entries("group.admin.promote");
    const refusals = async () =>
      count(sql`select case when is_called then last_value else 0 end as n from cbt_auditx_refusals`);
    const refusedBefore = await refusals();
    await refuse("group.admin.promote");
    const res = await fetch(`${node.adminUrl}/admin/v1/users/${dave.userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(202);
    const { erasureId } = (await res.json()) as { erasureId: string };
    for (let i = 0; i < 600 && (await refusals()) === refusedBefore; i++) await Bun.sleep(25);
    expect(await refusals()).toBeGreaterThan(refusedBefore);
    // The step whose entry was refused rolled back whole: Dave's account and admin role are still there.
    expect(await count(sql`select count(*)::int as n from accounts where id = ${dave.userId}`)).toBe(1);
    expect(
      await count(
        sql`select count(*)::int as n from group_members where group_id = ${groupId} and role = 'admin' and user_id = ${dave.userId}`,
      ),
    ).toBe(1);

    // Let it through: the retried step erases Dave, promotes Erin, and the promotion is in the trail.
    await refuse(undefined);
    await node.gdpr.erasures.settled(erasureId);
    for (let i = 0; i < 600 && (await client.get(`/v1/erasures/${erasureId}`)).body.status !== "done"; i++)
      await Bun.sleep(50);
    expect((await client.get(`/v1/erasures/${erasureId}`)).body.status).toBe("done");
    expect(await count(sql`select count(*)::int as n from accounts where id = ${dave.userId}`)).toBe(0);
    expect((await client.get(`/v1/groups/${groupId}`, erin.accessToken)).body.admins).toEqual([erin.userId]);
    expect(await entries("group.admin.promote")).toBe(promotions + 1);
  });

  test("keys.upload: a refused entry stores no keys", async () => {
    const alice = await registerAndLogin(client);
    const { upload } = await validUpload(3);
    await refuse("keys.upload");
    expect((await client.put("/v1/keys", upload, alice.accessToken)).status).toBe(500);
    expect(
      await count(sql`select count(*)::int as n from identity_keys where user_id = ${alice.userId}`),
    ).toBe(0);
    await refuse(undefined);
  });
});
