import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { ClearBoxClient } from "../../src/client/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, uniqueUsername } from "../support/http.ts";
import { ADMIN_TOKEN, type Backend, offlineOn, startTestNode, type TestNode } from "../support/node.ts";
import { waitUntil } from "../support/ws.ts";

describe.each(STACKS)("export on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
  });
  afterAll(() => node?.teardown());

  test("holds every category for a user with data in every store, and matches its admin twin", async () => {
    const open = async () => {
      const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
      await client.register(uniqueUsername("exp"), "correct horse battery");
      return client;
    };
    const me = await open();
    const friend = await open();
    const { groupId } = await me.http.createGroup({ name: "exported", members: [friend.userId] });
    const socket = await me.connect();
    const sent = randomUUID();
    expect((await socket.sendToUser(sent, friend.userId, await me.encrypt(friend.userId, "hi"))).type).toBe(
      "accepted",
    );
    const friendSocket = await friend.connect();
    const received = randomUUID();
    socket.close();
    await offlineOn(node, me.userId);
    expect(
      (await friendSocket.sendToUser(received, me.userId, await friend.encrypt(me.userId, "while away")))
        .type,
    ).toBe("accepted");
    friendSocket.close();
    // The queued copy is written after `accepted` (the actor flushes it): wait for it, not a pause.
    await waitUntil(async () => (await node.offline.depth(me.userId, 1)) === 1, "the queued copy");

    const res = await api(node.url).get("/v1/me/export", await me.http.accessToken());
    expect(res.status).toBe(200);
    const archive = res.body;
    expect(archive.format).toBe("clearbox-export/1");
    expect(archive.account).toMatchObject({ userId: me.userId, username: expect.any(String) });
    expect(archive.devices).toHaveLength(1);
    expect(archive.publicKeys[0]).toMatchObject({
      deviceId: 1,
      identityKey: expect.any(String),
      oneTimePreKeys: expect.any(Number),
    });
    expect(archive.publicKeys[0].signedPreKey.publicKey).toEqual(expect.any(String));
    expect(archive.groups).toEqual([expect.objectContaining({ groupId, name: "exported", role: "admin" })]);
    const ids = archive.messages.metadata.map((m: { id: string }) => m.id);
    expect(ids).toContain(sent);
    expect(ids).toContain(received);
    expect(archive.messages.queued.map((m: { id: string }) => m.id)).toEqual([received]);
    expect(archive.messages.queued[0].body.length).toBeGreaterThan(10);
    expect(archive.presence).toMatchObject({ user: me.userId, online: false });
    expect(archive.presence.lastSeen).toBeGreaterThan(0);
    expect(archive.audit.map((e: { action: string }) => e.action)).toContain("session.login");
    expect(archive.processing.retention.undeliveredMessagesDays).toBe(30);
    expect(archive.processing.purposes.length).toBeGreaterThan(2);
    expect(JSON.stringify(archive)).not.toContain("correct horse battery");

    const twin = await fetch(`${node.adminUrl}/admin/v1/users/${me.userId}/export`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(twin.status).toBe(200);
    const adminArchive = (await twin.json()) as typeof archive;
    expect(adminArchive.account).toEqual(archive.account);
    // The first export is itself recorded in the audit trail the second one shows.
    expect(
      adminArchive.audit.filter((e: { action: string }) => e.action === "export").length,
    ).toBeGreaterThanOrEqual(1);
  });

  test("an account gets 5 exports an hour: the 6th is 429 with Retry-After and reads and audits nothing; the admin twin still answers", async () => {
    const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await client.register(uniqueUsername("exp"), "correct horse battery");
    const token = await client.http.accessToken();
    const http = api(node.url);
    for (let i = 0; i < 5; i++) expect((await http.get("/v1/me/export", token)).status).toBe(200);
    const refused = await http.get("/v1/me/export", token);
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe("rate_limited");
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(60);
    const twin = await fetch(`${node.adminUrl}/admin/v1/users/${client.userId}/export`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(twin.status).toBe(200);
    const archive = (await twin.json()) as { audit: { action: string; actor: unknown }[] };
    // Five self exports recorded (the refused one none), and the admin's own is recorded after this read.
    expect(archive.audit.filter((e) => e.action === "export")).toHaveLength(5);
    client.close();
  });

  test("another user's export is not reachable with one's own token, and unknown users are 404 to the admin", async () => {
    const res = await api(node.url).get(`/v1/me/export`);
    expect(res.status).toBe(401);
    const unknown = await fetch(`${node.adminUrl}/admin/v1/users/${randomUUID()}/export`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(unknown.status).toBe(404);
  });
});
