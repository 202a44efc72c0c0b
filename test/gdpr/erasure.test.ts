import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { sql } from "drizzle-orm";
import { Redis } from "ioredis";
import { ClearBoxClient } from "../../src/client/index.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { type SignedReceipt, verifyReceipt } from "../../src/protocol/erasure-receipt.ts";
import { REDIS_URL, runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, uniqueUsername } from "../support/http.ts";
import { ADMIN_TOKEN, type Backend, offlineOn, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const PASSWORD = "correct horse battery";

/** Every row of every table in the database, as one string, to search for identifiers. */
async function databaseDump(node: TestNode): Promise<string> {
  const tablesResult: any = await node.database.db.execute(
    sql`select table_name from information_schema.tables where table_schema = 'public'`,
  );
  const tables: string[] = (tablesResult.rows ?? tablesResult).map(
    (r: { table_name: string }) => r.table_name,
  );
  expect(tables).toContain("envelopes");
  let dump = "";
  for (const table of tables) {
    const result: any = await node.database.db.execute(sql.raw(`select * from "${table}"`));
    for (const row of result.rows ?? result) {
      for (const value of Object.values(row)) {
        dump += value instanceof Uint8Array ? Buffer.from(value).toString("latin1") : JSON.stringify(value);
        dump += "\n";
      }
    }
  }
  return dump;
}

/**
 * The embedded default's envelope log (SQLite, beside PGlite): every row of every table, and the raw
 * bytes of its file and write-ahead log (secure_delete and the checkpoint after an erasure must
 * leave no copy of a removed row behind). Empty on the services stack (the log is in PostgreSQL).
 */
function embeddedLogDump(node: TestNode): string {
  if (!(node.log instanceof SqliteEnvelopeLog)) return "";
  const path = node.log.path;
  const db = new Database(path, { readonly: true });
  let dump = "";
  try {
    const tables = db
      .query<{ name: string }, []>("select name from sqlite_master where type = 'table'")
      .all();
    expect(tables.map((t) => t.name)).toContain("envelopes");
    for (const { name } of tables) {
      for (const row of db.query<Record<string, unknown>, []>(`select * from "${name}"`).all()) {
        for (const value of Object.values(row)) {
          dump += value instanceof Uint8Array ? Buffer.from(value).toString("latin1") : JSON.stringify(value);
          dump += "\n";
        }
      }
    }
  } finally {
    db.close();
  }
  for (const file of [path, `${path}-wal`]) {
    if (existsSync(file)) dump += readFileSync(file).toString("latin1");
  }
  return dump;
}

/** A person with an SDK client (keys uploaded) and a socket. */
async function person(node: TestNode) {
  const username = uniqueUsername("gdpr");
  const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
  await client.register(username, PASSWORD);
  return { client, username, userId: client.userId as string };
}

async function waitFor<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(100);
  }
}

describe.each(STACKS)("erasure on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
  });
  afterAll(() => node?.teardown());

  test("reaches every store: nothing names the user afterwards, others keep their data, the receipt verifies", async () => {
    const victim = await person(node);
    const friend = await person(node);
    const other = await person(node);
    const http = api(node.url);

    // Groups: one the victim administers, one they are a member of.
    const own = await victim.client.http.createGroup({
      name: "victim's",
      members: [friend.userId, other.userId],
    });
    const theirs = await friend.client.http.createGroup({
      name: "friend's",
      members: [victim.userId, other.userId],
    });
    for (const member of [friend, other]) await member.client.http.acceptInvitation(own.groupId);
    for (const member of [victim, other]) await member.client.http.acceptInvitation(theirs.groupId);
    // Pending invitations both ways (blocks both ways are made below): erasure removes them too.
    const pending = await other.client.http.createGroup({ name: "other's", members: [victim.userId] });
    await victim.client.http.createGroup({ name: "unanswered", members: [other.userId] });

    // Messages: queued for the offline friend from the victim, and from `other` (must survive);
    // queued for the victim from the friend; one delivered live to the victim.
    const victimSocket = await victim.client.connect();
    const otherSocket = await other.client.connect();
    const friendWatch = await TestSocket.open(node.url, (await friend.client.http.accessToken()) as string);
    friendWatch.send({ type: "presence.watch", users: [victim.userId] });
    await friendWatch.next((f) => f.type === "presence" && f.online === true);
    await friendWatch.close();
    const toFriend = await victimSocket.sendToUser(
      randomUUID(),
      friend.userId,
      await victim.client.encrypt(friend.userId, "from the victim"),
    );
    expect(toFriend.type).toBe("accepted");
    const survivingId = randomUUID();
    expect(
      (
        await otherSocket.sendToUser(
          survivingId,
          friend.userId,
          await other.client.encrypt(friend.userId, "from other"),
        )
      ).type,
    ).toBe("accepted");
    const friendSocket = await friend.client.connect();
    const friendInbox: string[] = [];
    friendSocket.on("message", (f) => friendInbox.push(f.id));
    await waitFor(async () => (friendInbox.length >= 2 ? true : undefined));
    friendSocket.close();
    await offlineOn(node, friend.userId);
    expect(
      (
        await victimSocket.sendToUser(
          randomUUID(),
          friend.userId,
          await victim.client.encrypt(friend.userId, "queued for friend"),
        )
      ).type,
    ).toBe("accepted");
    const laterFromOther = randomUUID();
    expect(
      (
        await otherSocket.sendToUser(
          laterFromOther,
          friend.userId,
          await other.client.encrypt(friend.userId, "also queued"),
        )
      ).type,
    ).toBe("accepted");
    victimSocket.close();
    await offlineOn(node, victim.userId);
    const friendSocket2 = await friend.client.connect();
    expect(
      (
        await friendSocket2.sendToUser(
          randomUUID(),
          victim.userId,
          await friend.client.encrypt(victim.userId, "for the victim"),
        )
      ).type,
    ).toBe("accepted");
    friendSocket2.close();
    await Bun.sleep(300);
    const liveVictim = await TestSocket.open(node.url, (await victim.client.http.accessToken()) as string);
    await liveVictim.messages(1);
    await victim.client.http.accessToken();

    // Blocks by and of the victim (made after the messages above, which they would have stopped).
    await victim.client.http.block(other.userId);
    await friend.client.http.block(victim.userId);
    // A wrong password leaves a login-failure counter keyed by username: erasure must remove it too.
    expect(
      (await http.post("/v1/sessions", { username: victim.username, password: "wrong guess 1" })).status,
    ).toBe(401);

    // The embedded log holds the victim's envelopes now, so the sweep below can see a leftover.
    if (stack === "embedded") expect(embeddedLogDump(node)).toContain(victim.userId);

    // The victim erases themselves; their socket is closed with 4410.
    const token = (await victim.client.http.accessToken()) as string;
    const refused = await http.call("DELETE", "/v1/me", { token, body: { password: "not my password" } });
    expect(refused.status).toBe(401);
    const started = await http.call("DELETE", "/v1/me", { token, body: { password: PASSWORD } });
    expect(started.status).toBe(202);
    const { erasureId } = started.body;
    expect((await liveVictim.whenClosed(10_000)).code).toBe(4410);
    const done = await waitFor(async () => {
      const res = await http.get(`/v1/erasures/${erasureId}`);
      return res.body.status === "done" ? res.body : undefined;
    });
    const receipt = done.receipt as SignedReceipt;
    const key = (await http.get("/v1/erasures/signing-key")).body.publicKey;
    expect(verifyReceipt(receipt, key)).toBe(true);
    expect(verifyReceipt({ ...receipt, payload: { ...receipt.payload, stores: {} } }, key)).toBe(false);
    expect(receipt.payload.erasureId).toBe(erasureId);
    expect(Object.keys(receipt.payload.stores).sort()).toEqual(
      ["audit", "fence", "history", "live", "offline_queues", "others_queues", "postgres", "redis"].sort(),
    );
    expect(receipt.payload.stores.postgres.removed).toBeGreaterThan(3);
    expect(receipt.payload.stores.history.removed).toBeGreaterThan(0);
    expect(receipt.payload.stores.live.removed).toBe(1);
    expect(JSON.stringify(receipt)).not.toContain(victim.userId);

    // Sweep PostgreSQL/PGlite (every table, history included): neither the id nor the username remains.
    const dump = await databaseDump(node);
    expect(dump).not.toContain(victim.userId);
    expect(dump).not.toContain(victim.username);
    expect(await node.log.metadataOf(victim.userId)).toEqual([]);
    // The embedded default's SQLite log: no row, and no byte of its files, names the victim.
    expect(embeddedLogDump(node)).not.toContain(victim.userId);
    // Redis: no key names the user.
    if (stack === "services") {
      const redis = new Redis(REDIS_URL);
      const keys = await redis.keys(`${prefix}:*`);
      const values = await Promise.all(keys.map(async (k) => `${k} ${JSON.stringify(await redis.dump(k))}`));
      await redis.quit();
      expect(keys.some((k) => k.includes(victim.userId) || k.includes(victim.username))).toBe(false);
      expect(values.join("\n")).not.toContain(victim.userId);
      // RabbitMQ: the victim's device queue is gone; the friend's queue holds no message from them.
      expect(await node.offline.depth(victim.userId, 1)).toBe(0);
    }
    expect(
      receipt.payload.stores.others_queues.removed + (stack === "embedded" ? 1 : 0),
    ).toBeGreaterThanOrEqual(1);
    const friendAfter = await friend.client.connect();
    const after: { id: string; from: string }[] = [];
    friendAfter.on("message", (f) => {
      after.push({ id: f.id, from: f.from.user });
      friendAfter.ack([f]);
    });
    // The victim's last message was queued before this one from `other`: had it survived, it
    // would have come first.
    await waitFor(async () => (after.some((m) => m.id === laterFromOther) ? true : undefined));
    expect(after.filter((m) => m.from === victim.userId)).toEqual([]);
    friendAfter.close();

    // Others untouched: the friend's group lives on without the victim; the victim's group without them too.
    const theirsNow = await friend.client.http.group(theirs.groupId);
    expect(theirsNow.members.sort()).toEqual([friend.userId, other.userId].sort());
    const ownNow = await friend.client.http.group(own.groupId);
    expect(ownNow.members).not.toContain(victim.userId);
    // The victim was the only admin of their group: the longest-standing member took over.
    expect(ownNow.admins).toEqual([friend.userId]);
    expect(await other.client.http.invitations()).toEqual([]);
    expect(await friend.client.http.blocks()).toEqual([]);
    expect((await other.client.http.group(pending.groupId)).members).toEqual([other.userId]);
    // The erased account cannot log in, and its old token is dead.
    expect((await http.post("/v1/sessions", { username: victim.username, password: PASSWORD })).status).toBe(
      401,
    );
    expect((await http.get("/v1/devices", token)).status).toBe(401);
    // Erasing again: the account is gone (admin gets 404); re-running the finished job changes nothing.
    const again = await fetch(`${node.adminUrl}/admin/v1/users/${victim.userId}/erase`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(again.status).toBe(404);
    await node.gdpr.erasures.run(erasureId);
    expect((await http.get(`/v1/erasures/${erasureId}`)).body).toEqual(done);
    otherSocket.close();
  });

  test("an unknown erasure id is 404 and a malformed one 400", async () => {
    const http = api(node.url);
    expect((await http.get(`/v1/erasures/${randomUUID()}`)).status).toBe(404);
    expect((await http.get("/v1/erasures/not-a-uuid")).status).toBe(400);
  });

  test("a bad or missing admin token erases nothing", async () => {
    const someone = await person(node);
    const variants: Record<string, string>[] = [{}, { authorization: "Bearer wrong-token-0123456789" }];
    for (const headers of variants) {
      const res = await fetch(`${node.adminUrl}/admin/v1/users/${someone.userId}/erase`, {
        method: "POST",
        headers,
      });
      expect(res.status).toBe(401);
    }
    expect(
      (
        await fetch(`${node.url}/admin/v1/users/${someone.userId}/erase`, {
          method: "POST",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        })
      ).status,
    ).toBe(404);
    expect((await someone.client.http.devices()).length).toBe(1);
  });
});
