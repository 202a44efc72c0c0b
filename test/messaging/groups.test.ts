import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { type Frame, TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

describe("group routes", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("the creator is admin and member; members see the group, others get 403", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const eve = await registerAndLogin(client);
    const created = await client.post(
      "/v1/groups",
      { name: "team", members: [bob.userId] },
      alice.accessToken,
    );
    expect(created.status).toBe(201);
    const { groupId } = created.body;
    // Invited, not yet a member: the group is not shown to Bob, nor Bob to its members.
    expect((await client.get(`/v1/groups/${groupId}`, bob.accessToken)).status).toBe(403);
    expect((await client.get(`/v1/groups/${groupId}`, alice.accessToken)).body.members).toEqual([
      alice.userId,
    ]);
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    const seen = await client.get(`/v1/groups/${groupId}`, bob.accessToken);
    expect(seen.status).toBe(200);
    expect(seen.body).toEqual({
      groupId,
      name: "team",
      // Oldest member first: Bob joined when he accepted.
      members: [alice.userId, bob.userId],
      admins: [alice.userId],
    });
    expect(seen.body.members.sort()).toEqual([alice.userId, bob.userId].sort());
    expect((await client.get(`/v1/groups/${groupId}`, eve.accessToken)).status).toBe(403);
    expect((await client.get(`/v1/groups/${randomUUID()}`, eve.accessToken)).status).toBe(404);
  });

  test("only admins add members; anyone may leave; admins may remove others", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const carol = await registerAndLogin(client);
    const { groupId } = (
      await client.post("/v1/groups", { name: "g", members: [bob.userId] }, alice.accessToken)
    ).body;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    expect(
      (await client.post(`/v1/groups/${groupId}/members`, { userId: carol.userId }, bob.accessToken)).status,
    ).toBe(403);
    expect(
      (await client.post(`/v1/groups/${groupId}/members`, { userId: carol.userId }, alice.accessToken))
        .status,
    ).toBe(204);
    expect(
      (await client.post(`/v1/invitations/${groupId}/accept`, undefined, carol.accessToken)).status,
    ).toBe(204);
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${alice.userId}`, bob.accessToken)).status,
    ).toBe(403);
    expect((await client.delete(`/v1/groups/${groupId}/members/${bob.userId}`, bob.accessToken)).status).toBe(
      204,
    );
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${carol.userId}`, alice.accessToken)).status,
    ).toBe(204);
    const left = await client.get(`/v1/groups/${groupId}`, alice.accessToken);
    expect(left.body.members).toEqual([alice.userId]);
  });

  test("unknown members are 404 and malformed bodies 400, and neither creates anything", async () => {
    const alice = await registerAndLogin(client);
    const count = async () =>
      (
        (await node.database.db.execute(
          sql`select (select count(*) from groups)::int as g, (select count(*) from group_members)::int as m,
                     (select count(*) from group_invitations)::int as i`,
        )) as any
      ).rows?.[0];
    const before = await count();
    expect(
      (await client.post("/v1/groups", { name: "x", members: [randomUUID()] }, alice.accessToken)).status,
    ).toBe(404);
    for (const body of [
      {},
      { name: "", members: [] },
      { name: "x", members: ["nope"] },
      { name: "x", members: [], extra: 1 },
      { name: 5, members: [] },
    ]) {
      const res = await client.post("/v1/groups", body, alice.accessToken);
      expect({ body, status: res.status }).toEqual({ body, status: 400 });
      expect(res.body.error.code).toBe("invalid");
    }
    expect((await client.post("/v1/groups", { name: "x", members: [] })).status).toBe(401);
    expect(await count()).toEqual(before);
  });
});

describe.each(STACKS)("group delivery on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("one send to a group of 50 reaches every other member device exactly once", async () => {
    const members = await Promise.all(Array.from({ length: 50 }, () => registerAndLogin(client)));
    const [sender, ...others] = members;
    // The sender's second device must get the message too: only the sending device is skipped.
    const senderSecond = (
      await client.post("/v1/sessions", {
        username: sender.username,
        password: sender.password,
        registrationId: 2,
      })
    ).body;
    const { groupId } = (
      await client.post(
        "/v1/groups",
        { name: "fifty", members: others.map((m) => m.userId) },
        sender.accessToken,
      )
    ).body;
    await Promise.all(
      others.map((m) => client.post(`/v1/invitations/${groupId}/accept`, undefined, m.accessToken)),
    );
    const sockets = await Promise.all(
      [...others.map((m) => m.accessToken), senderSecond.accessToken].map((t) =>
        TestSocket.open(node.url, t),
      ),
    );
    const senderSocket = await TestSocket.open(node.url, sender.accessToken);
    /**
     * Sends one more group message and waits until every socket has it; returns, per socket, the
     * message frames that came before it. Each member's actor pushes in the order it is told, so
     * a duplicate of an earlier message would come first (a pause and a look proves nothing).
     */
    const beforeNextGroupMessage = async () => {
      const marker = randomUUID();
      senderSocket.send({
        type: "send",
        id: marker,
        to: { group: groupId },
        message: { type: 7, body: b64("marker") },
      });
      expect((await senderSocket.reply(marker)).type).toBe("accepted");
      return Promise.all(
        sockets.map(async (socket) => {
          const before: Frame[] = [];
          for (;;) {
            const [m] = (await socket.messages(1)) as [Frame];
            if (m.id === marker) return before;
            before.push(m);
          }
        }),
      );
    };
    const id = randomUUID();
    senderSocket.send({
      type: "send",
      id,
      to: { group: groupId },
      message: { type: 7, body: b64("sender key ciphertext") },
    });
    const reply = await senderSocket.reply(id);
    expect(reply.type).toBe("accepted");
    const received = await Promise.all(sockets.map((s) => s.messages(1)));
    for (const [m] of received) {
      expect(m).toMatchObject({
        id,
        group: groupId,
        from: { user: sender.userId, device: 1 },
        envelope: { type: 7 },
      });
    }
    // Once each, and nothing to the sending device: nothing came before a later group message.
    expect(await beforeNextGroupMessage()).toEqual(sockets.map(() => []));
    expect(senderSocket.pendingMessages()).toHaveLength(0);
    // Re-sending the same id is accepted and delivers nothing new.
    senderSocket.send({
      type: "send",
      id,
      to: { group: groupId },
      message: { type: 7, body: b64("sender key ciphertext") },
    });
    expect((await senderSocket.reply(id)).type).toBe("accepted");
    expect(await beforeNextGroupMessage()).toEqual(sockets.map(() => []));
    expect(senderSocket.pendingMessages()).toHaveLength(0);
    await Promise.all([...sockets, senderSocket].map((s) => s.close()));
  });

  test("a non-member's send is rejected as not_member and an unknown group as unknown_recipient", async () => {
    const alice = await registerAndLogin(client);
    const eve = await registerAndLogin(client);
    const { groupId } = (await client.post("/v1/groups", { name: "closed", members: [] }, alice.accessToken))
      .body;
    const socket = await TestSocket.open(node.url, eve.accessToken);
    const id = randomUUID();
    socket.send({ type: "send", id, to: { group: groupId }, message: { type: 7, body: b64("x") } });
    expect(await socket.reply(id)).toMatchObject({ type: "rejected", id, code: "not_member" });
    const other = randomUUID();
    socket.send({
      type: "send",
      id: other,
      to: { group: randomUUID() },
      message: { type: 7, body: b64("x") },
    });
    expect(await socket.reply(other)).toMatchObject({ type: "rejected", code: "unknown_recipient" });
    await socket.close();
  });

  test("the group actor's member cache never hides a change: the very next send sees a member added or removed, a device added, a block set or lifted", async () => {
    const [alice, bob, carol] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const accept = async (groupId: string, token: string) =>
      expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, token)).status).toBe(204);
    const { groupId } = (
      await client.post("/v1/groups", { name: "g", members: [bob.userId] }, alice.accessToken)
    ).body;
    await accept(groupId, bob.accessToken);
    // A second group, whose messages are sentinels: a member's next message from it shows that a
    // group message sent before it (and accepted before it was sent) did not reach that member.
    const sentinels = (
      await client.post("/v1/groups", { name: "s", members: [bob.userId, carol.userId] }, alice.accessToken)
    ).body.groupId as string;
    await Promise.all([accept(sentinels, bob.accessToken), accept(sentinels, carol.accessToken)]);
    const [a, b, c] = await Promise.all(
      [alice, bob, carol].map((u) => TestSocket.open(node.url, u.accessToken)),
    );
    const send = async (socket: TestSocket, to: string, text: string) => {
      const id = randomUUID();
      socket.send({ type: "send", id, to: { group: to }, message: { type: 7, body: b64(text) } });
      expect((await socket.reply(id)).type).toBe("accepted");
      return id;
    };
    const next = async (socket: TestSocket) => (await socket.messages(1))[0]?.id;

    // Cached from here on (the group actor has read the members once).
    const m1 = await send(a, groupId, "m1");
    expect(await next(b)).toBe(m1);

    // A member added: the next send reaches them.
    expect(
      (await client.post(`/v1/groups/${groupId}/members`, { userId: carol.userId }, alice.accessToken))
        .status,
    ).toBe(204);
    await accept(groupId, carol.accessToken);
    const m2 = await send(a, groupId, "m2");
    expect(await next(b)).toBe(m2);
    expect(await next(c)).toBe(m2);

    // A device added to a member: the next send reaches it.
    const bobSecond = (
      await client.post("/v1/sessions", { username: bob.username, password: bob.password, registrationId: 2 })
    ).body;
    const b2 = await TestSocket.open(node.url, bobSecond.accessToken);
    const m3 = await send(a, groupId, "m3");
    expect(await next(b)).toBe(m3);
    expect(await next(b2)).toBe(m3);
    expect(await next(c)).toBe(m3);

    // A member removed: the next send does not reach them.
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${carol.userId}`, alice.accessToken)).status,
    ).toBe(204);
    const m4 = await send(a, groupId, "m4");
    expect(await next(b)).toBe(m4);
    expect(await next(b2)).toBe(m4);
    const s1 = await send(a, sentinels, "s1");
    expect(await next(c)).toBe(s1);
    expect(await next(b)).toBe(s1);
    expect(await next(b2)).toBe(s1);

    // A member blocks the sender: the next send reaches none of their devices; lifted, it does again.
    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    await send(a, groupId, "m5");
    const s2 = await send(c, sentinels, "s2");
    expect(await next(b)).toBe(s2);
    expect(await next(b2)).toBe(s2);
    expect((await client.delete(`/v1/blocks/${alice.userId}`, bob.accessToken)).status).toBe(204);
    const m6 = await send(a, groupId, "m6");
    expect(await next(b)).toBe(m6);
    expect(await next(b2)).toBe(m6);
    await Promise.all([a, b, b2, c].map((s) => s.close()));
  });

  test("offline members get the group message on reconnect", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const { groupId } = (
      await client.post("/v1/groups", { name: "later", members: [bob.userId] }, alice.accessToken)
    ).body;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    const a = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    a.send({ type: "send", id, to: { group: groupId }, message: { type: 7, body: b64("while away") } });
    expect((await a.reply(id)).type).toBe("accepted");
    const b = await TestSocket.open(node.url, bob.accessToken);
    expect((await b.messages(1))[0]).toMatchObject({ id, group: groupId });
    await Promise.all([a.close(), b.close()]);
  });
});
