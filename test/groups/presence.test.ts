import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { blocks } from "../../src/db/schema.ts";
import { type Api, api, registerAndLogin, relate } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { type Frame, TestSocket } from "../support/ws.ts";

type Person = Awaited<ReturnType<typeof registerAndLogin>>;

/**
 * Issue 13 item 6: presence goes only to related users — who share a group both accepted, neither
 * blocking the other. Anyone else is answered like an account that was never online.
 */
describe("presence only for related users", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // A 3 s lease: watch lists are re-evaluated on every renewal (each second).
    node = await startTestNode("pglite", { env: { PRESENCE_LEASE_SECONDS: "3" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const people = (n: number) => Promise.all(Array.from({ length: n }, () => registerAndLogin(client)));
  const online = async (p: Person) => {
    const socket = await TestSocket.open(node.url, p.accessToken);
    socket.send({ type: "ping" });
    await socket.next((f) => f.type === "pong");
    return socket;
  };
  const presenceOf =
    (user: string, more: (f: Frame) => boolean = () => true) =>
    (f: Frame) =>
      f.type === "presence" && f.user === user && more(f);
  const unseen = (user: string) => ({ type: "presence", user, online: false, lastSeen: 0 });
  /** Presence frames received so far and not taken, about `user`. */
  const framesAbout = (socket: TestSocket, user: string) =>
    socket.frames.filter((f: Frame) => f.type === "presence" && f.user === user);

  test("an unrelated watcher gets an online user as never seen, like an id with no account, and no later change", async () => {
    const [watcher, stranger, friend] = await people(3);
    await relate(client, watcher, friend);
    const strangerSocket = await online(stranger);
    const friendSocket = await online(friend);
    const socket = await TestSocket.open(node.url, watcher.accessToken);
    const nobody = randomUUID();
    socket.send({ type: "presence.watch", users: [stranger.userId, nobody, friend.userId, watcher.userId] });
    expect(await socket.next(presenceOf(stranger.userId))).toEqual(unseen(stranger.userId));
    expect(await socket.next(presenceOf(nobody))).toEqual(unseen(nobody));
    expect(await socket.next(presenceOf(friend.userId))).toMatchObject({ online: true });
    // One's own presence is one's own.
    expect(await socket.next(presenceOf(watcher.userId))).toMatchObject({ online: true });
    // Both go offline: the friend's change arrives; the stranger's never does (it was sent first).
    await strangerSocket.close();
    await friendSocket.close();
    expect(await socket.next(presenceOf(friend.userId, (f) => !f.online))).toMatchObject({ online: false });
    expect(framesAbout(socket, stranger.userId)).toEqual([]);
    await socket.close();
  });

  test("a pending invitation relates nobody; accepting it starts presence both ways without a new watch list", async () => {
    const [alice, bob] = await people(2);
    const created = await client.post(
      "/v1/groups",
      { name: "soon", members: [bob.userId] },
      alice.accessToken,
    );
    const { groupId } = created.body;
    const bobSocket = await online(bob);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    aliceSocket.send({ type: "presence.watch", users: [bob.userId] });
    expect(await aliceSocket.next(presenceOf(bob.userId))).toEqual(unseen(bob.userId));
    bobSocket.send({ type: "presence.watch", users: [alice.userId] });
    expect(await bobSocket.next(presenceOf(alice.userId))).toEqual(unseen(alice.userId));
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, bob.accessToken)).status).toBe(
      204,
    );
    expect(await aliceSocket.next(presenceOf(bob.userId))).toMatchObject({ user: bob.userId, online: true });
    expect(await bobSocket.next(presenceOf(alice.userId))).toMatchObject({
      user: alice.userId,
      online: true,
    });
    await Promise.all([aliceSocket.close(), bobSocket.close()]);
  });

  test("a block ends presence both ways at once, and lifting it restores it", async () => {
    const [alice, bob] = await people(2);
    await relate(client, alice, bob);
    const bobSocket = await online(bob);
    const aliceSocket = await online(alice);
    aliceSocket.send({ type: "presence.watch", users: [bob.userId] });
    expect(await aliceSocket.next(presenceOf(bob.userId))).toMatchObject({ online: true });
    bobSocket.send({ type: "presence.watch", users: [alice.userId] });
    expect(await bobSocket.next(presenceOf(alice.userId))).toMatchObject({ online: true });
    // Bob blocks Alice: Alice (the blocked one) can no longer watch Bob, nor Bob Alice.
    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    expect(await aliceSocket.next(presenceOf(bob.userId))).toEqual(unseen(bob.userId));
    expect(await bobSocket.next(presenceOf(alice.userId))).toEqual(unseen(alice.userId));
    // A fresh watch list is answered the same way.
    aliceSocket.send({ type: "presence.watch", users: [bob.userId] });
    expect(await aliceSocket.next(presenceOf(bob.userId))).toEqual(unseen(bob.userId));
    expect((await client.delete(`/v1/blocks/${alice.userId}`, bob.accessToken)).status).toBe(204);
    expect(await aliceSocket.next(presenceOf(bob.userId))).toMatchObject({ online: true });
    await Promise.all([aliceSocket.close(), bobSocket.close()]);
  });

  test("leaving the only shared group ends presence; going offline afterwards is not reported", async () => {
    const [alice, carol] = await people(2);
    const groupId = await relate(client, alice, carol);
    const carolSocket = await online(carol);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    aliceSocket.send({ type: "presence.watch", users: [carol.userId] });
    expect(await aliceSocket.next(presenceOf(carol.userId))).toMatchObject({ online: true });
    expect(
      (await client.delete(`/v1/groups/${groupId}/members/${carol.userId}`, carol.accessToken)).status,
    ).toBe(204);
    expect(await aliceSocket.next(presenceOf(carol.userId))).toEqual(unseen(carol.userId));
    await carolSocket.close();
    // A new list naming Carol and Alice herself: answered in order, and nothing else about Carol came.
    aliceSocket.send({ type: "presence.watch", users: [carol.userId, alice.userId] });
    expect(await aliceSocket.next(presenceOf(carol.userId))).toEqual(unseen(carol.userId));
    expect(await aliceSocket.next(presenceOf(alice.userId))).toMatchObject({ online: true });
    expect(framesAbout(aliceSocket, carol.userId)).toEqual([]);
    await aliceSocket.close();
  });

  test("a relation ended where this node cannot see it (another node, the database) stops presence within a lease renewal", async () => {
    const [alice, bob] = await people(2);
    await relate(client, alice, bob);
    const bobSocket = await online(bob);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    aliceSocket.send({ type: "presence.watch", users: [bob.userId] });
    expect(await aliceSocket.next(presenceOf(bob.userId))).toMatchObject({ online: true });
    // As a block made on another node: straight into the table, no local notification.
    await node.database.db.insert(blocks).values({ userId: bob.userId, blockedUserId: alice.userId });
    expect(await aliceSocket.next(presenceOf(bob.userId), 10_000)).toEqual(unseen(bob.userId));
    await Promise.all([aliceSocket.close(), bobSocket.close()]);
  });
});
