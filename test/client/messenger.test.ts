import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import {
  type ChatMessage,
  ClearBoxApiError,
  ClearBoxClient,
  ClearBoxHttp,
  Messenger,
  type SessionTokens,
} from "../../src/client/index.ts";
import { USER_LOOKUP_LIMIT } from "../../src/users/index.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { startTcpProxy } from "../support/tcp-proxy.ts";

const password = "correct horse battery";

/** Resolves once `predicate` holds (checked every 20 ms); fails the test after `ms`. */
async function until(predicate: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

async function apiError(promise: Promise<unknown>): Promise<ClearBoxApiError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof ClearBoxApiError) return error;
    throw error;
  }
  throw new Error("expected a ClearBoxApiError");
}

/** A registered user with a Messenger that records what it receives. */
async function chatter(url: string, prefix: string, options: { storePath?: string } = {}) {
  const client = ClearBoxClient.open({ serverUrl: url, storePath: options.storePath ?? ":memory:" });
  const username = uniqueUsername(prefix);
  await client.register(username, password);
  const messenger = new Messenger(client, { minDelayMs: 50, maxDelayMs: 500 });
  const received: ChatMessage[] = [];
  const changes: { userId: string; username?: string; deviceId: number }[] = [];
  const statuses: string[] = [];
  messenger.on("message", (m) => {
    if (!m.outgoing) received.push(m);
  });
  messenger.on("identityChanged", (change) => changes.push(change));
  messenger.on("status", (status) => statuses.push(status));
  return { client, messenger, username, received, changes, statuses };
}

describe("chat SDK: user directory, messenger, safety numbers", () => {
  let node: TestNode;
  let dir: string;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-messenger-"));
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("GET /v1/users finds an exact username only, and answers ids with names", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    const bobName = uniqueUsername("bob");
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await bob.register(bobName, password);

    expect(await alice.http.lookupUser(bobName)).toEqual({ userId: bob.userId, username: bobName });
    expect(await alice.http.user(bob.userId)).toEqual({ userId: bob.userId, username: bobName });
    // No prefix search: a name that merely starts another is unknown.
    expect((await apiError(alice.http.lookupUser(bobName.slice(0, -1)))).status).toBe(404);
    expect((await apiError(alice.http.user(crypto.randomUUID()))).status).toBe(404);
    // Malformed names and ids are refused before any lookup.
    expect((await apiError(alice.http.lookupUser("NotAName!"))).code).toBe("invalid");
    const raw = await fetch(`${node.url}/v1/users?username=${bobName}`);
    expect(raw.status).toBe(401);
    // A refused value is named by its rule, never echoed; no log line holds a looked-up name.
    const marker = "Refused-Value-Marker";
    for (const path of [
      `/v1/users?username=${marker}`,
      `/v1/users/${marker}`,
      `/v1/users?username=a&x=${marker}`,
    ]) {
      const res = await fetch(`${node.url}${path}`, {
        headers: { authorization: `Bearer ${await alice.http.accessToken()}` },
      });
      expect({ path, status: res.status }).toEqual({ path, status: 400 });
      expect(await res.text()).not.toContain(marker);
    }
    expect(node.logs.join("")).not.toContain(bobName);
    expect(node.logs.join("")).not.toContain(marker);
    alice.close();
    bob.close();
  });

  test("lookups are rate-limited per device: misses count, another device keeps its own budget", async () => {
    const username = uniqueUsername("prober");
    const phone = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await phone.register(username, password);
    for (let i = 0; i < USER_LOOKUP_LIMIT.limit; i++) {
      expect((await apiError(phone.http.lookupUser(uniqueUsername("nobody")))).status).toBe(404);
    }
    const refused = await apiError(phone.http.lookupUser(uniqueUsername("nobody")));
    expect(refused.status).toBe(429);
    expect(refused.retryAfterSeconds).toBeGreaterThan(0);
    // Refused even for a name that exists: the budget is spent before the directory is read.
    expect((await apiError(phone.http.lookupUser(username))).status).toBe(429);
    const laptop = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await laptop.login(username, password, "laptop");
    expect((await laptop.http.lookupUser(username)).username).toBe(username);
    phone.close();
    laptop.close();
  });

  test("concurrent token refreshes share one request, so a single-use refresh token is not replayed", async () => {
    const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await client.register(uniqueUsername("racer"), password);
    const [first, second] = await Promise.all([client.http.refresh(), client.http.refresh()]);
    expect(first.refreshToken).toBe(second.refreshToken);
    // Had the old token been spent twice, the server would have revoked the device.
    expect((await client.http.devices()).length).toBe(1);
    expect((await client.http.refresh()).refreshToken).not.toBe(first.refreshToken);
    client.close();
  });

  test("a password change and a refresh crossing: the client keeps the change's session, whichever starts first", async () => {
    for (const first of ["change", "refresh"] as const) {
      // Between client and node, a proxy that makes the two cross the bad way when they are sent
      // together: the change reaches the node only after the refresh was answered (the refresh's
      // successor is then revoked by the change), and the refresh's answer reaches the client only
      // after it stored the change's session. Each hold gives up after 500 ms: a client that sends
      // the two one after the other (as it must) is only slowed down.
      let client: ClearBoxClient | undefined;
      let changeTokens: string | undefined;
      let refreshAnswered = false;
      const until500 = async (done: () => boolean) => {
        for (const end = Date.now() + 500; !done() && Date.now() < end; ) await Bun.sleep(5);
      };
      const proxy = Bun.serve({
        port: 0,
        async fetch(request) {
          const { pathname, search } = new URL(request.url);
          if (pathname === "/v1/me/password") await until500(() => refreshAnswered);
          const answer = await fetch(`${node.url}${pathname}${search}`, {
            method: request.method,
            headers: request.headers,
            body: request.method === "GET" ? undefined : await request.arrayBuffer(),
          });
          const body = await answer.arrayBuffer();
          if (pathname === "/v1/me/password" && answer.status === 200)
            changeTokens = (JSON.parse(new TextDecoder().decode(body)) as SessionTokens).refreshToken;
          if (pathname === "/v1/sessions/refresh") {
            refreshAnswered = true;
            await until500(
              () =>
                changeTokens !== undefined &&
                client?.store.get<SessionTokens>("tokens")?.refreshToken === changeTokens,
            );
          }
          return new Response(body, { status: answer.status, headers: answer.headers });
        },
      });
      try {
        client = ClearBoxClient.open({ serverUrl: `http://127.0.0.1:${proxy.port}`, storePath: ":memory:" });
        await client.register(uniqueUsername("rekey"), password);
        const before = client.store.get<SessionTokens>("tokens");
        const change = () =>
          client?.http.changePassword({ currentPassword: password, newPassword: "a new passphrase" });
        if (first === "change") await Promise.all([change(), client.http.refresh()]);
        else await Promise.all([client.http.refresh(), change()]);
        const stored = client.store.get<SessionTokens>("tokens");
        expect(stored?.refreshToken).not.toBe(before?.refreshToken);
        // What is stored is a live session (checked without the SDK's refresh-and-retry on a 401).
        const devices = await fetch(`${node.url}/v1/devices`, {
          headers: { authorization: `Bearer ${stored?.accessToken}` },
        });
        expect(devices.status).toBe(200);
        const refreshed = await fetch(`${node.url}/v1/sessions/refresh`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ refreshToken: stored?.refreshToken }),
        });
        expect(refreshed.status).toBe(201);
      } finally {
        client?.close();
        proxy.stop(true);
      }
    }
  });

  test("a password change through the Messenger: it reconnects with the new session and sends; the old tokens and another session on this device id are refused", async () => {
    const storePath = join(dir, "rekey-alice.db");
    const a = await chatter(node.url, "alice", { storePath });
    const b = await chatter(node.url, "bob");
    a.messenger.start();
    b.messenger.start();
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    // Someone with the password logs in on alice's device id.
    const intruder = new ClearBoxHttp(node.url);
    const theirs = await intruder.login({ username: a.username, password, deviceId: a.client.deviceId });
    const before = a.client.store.get<SessionTokens>("tokens");
    // A wrong current password changes nothing: no close, the socket stays.
    const wrong = await apiError(
      a.messenger.changePassword({ currentPassword: "not the password", newPassword: "a new passphrase" }),
    );
    expect(wrong.status).toBe(401);
    expect(a.client.store.get<SessionTokens>("tokens")).toEqual(before);
    a.statuses.length = 0;
    await a.messenger.changePassword({ currentPassword: password, newPassword: "a new passphrase" });
    const after = a.client.store.get<SessionTokens>("tokens");
    expect(after?.accessToken).not.toBe(before?.accessToken);
    expect(after?.deviceId).toBe(before?.deviceId);
    await until(() => a.statuses.includes("online"), "alice back online");
    expect(a.statuses).not.toContain("stopped");
    await a.messenger.sendText(b.username, "after the change");
    await until(() => b.received.length === 1, "bob's message");
    expect(b.received[0].text).toBe("after the change");
    for (const token of [before?.accessToken, theirs.accessToken]) {
      const refused = await fetch(`${node.url}/v1/devices`, {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(refused.status).toBe(401);
    }
    expect((await apiError(intruder.devices())).status).toBe(401);
    a.messenger.stop();
    a.client.close();
    // The store holds the new session.
    const reopened = ClearBoxClient.open({ storePath });
    expect((await reopened.http.devices()).length).toBe(1);
    reopened.close();
    b.messenger.stop();
    b.client.close();
  });

  test("a store file is written only once a registration or login succeeded", async () => {
    const path = join(dir, "deferred.db");
    const failing = ClearBoxClient.open({ serverUrl: node.url, storePath: path });
    const refused = await apiError(failing.login(uniqueUsername("ghost"), password));
    expect(refused.status).toBe(401);
    failing.close();
    expect(existsSync(path)).toBe(false);

    const username = uniqueUsername("carol");
    const client = ClearBoxClient.open({ serverUrl: node.url, storePath: path });
    await client.register(username, password);
    expect(existsSync(path)).toBe(true);
    const { userId, deviceId } = client;
    client.close();
    const reopened = ClearBoxClient.open({ storePath: path });
    expect({ userId: reopened.userId, deviceId: reopened.deviceId, username: reopened.username }).toEqual({
      userId,
      deviceId,
      username,
    });
    expect(reopened.serverUrl).toBe(node.url);
    reopened.close();
  });

  test("two users chat by username both ways on one socket each; names, not ids, on messages", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    // Ids of messages handled more than 400 days ago are forgotten at start; recent ones are kept.
    const received = b.client.store.db;
    received
      .query("insert into received (id, at) values (?, ?), (?, ?)")
      .run("ancient", 0, "recent", Date.now());
    a.messenger.start();
    b.messenger.start();
    const ids = received.query<{ id: string }, []>("select id from received order by id").all();
    expect(ids.map((r) => r.id)).toEqual(["recent"]);
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    await a.messenger.sendText(b.username, "hi bob");
    await until(() => b.received.length === 1, "bob's message");
    expect(b.received[0]).toMatchObject({
      text: "hi bob",
      from: { userId: a.client.userId, username: a.username },
      conversation: a.client.userId,
    });
    await b.messenger.sendText(a.username, "hi alice");
    await until(() => a.received.length === 1, "alice's message");
    expect(a.received[0].from.username).toBe(b.username);
    // Both sides' histories hold both messages, ours marked sent.
    const history = a.messenger.history(b.client.userId);
    expect(history.map((m) => [m.text, m.state])).toEqual([
      ["hi bob", "sent"],
      ["hi alice", "received"],
    ]);
    a.messenger.stop();
    b.messenger.stop();
    a.client.close();
    b.client.close();
  });

  // Ids are chosen by senders: Mallory, having learned the id of a message of Alice's (a group
  // message all three received), sends Bob a message with it first, readable or not. Bob's
  // Messenger must still show Alice's, and keep both apart in its history.
  test("another sender's message with the same id, readable or not, hides nothing of the first sender's", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    const m = await chatter(node.url, "mallory");
    const undecryptable: string[] = [];
    b.messenger.on("undecryptable", (u) => undecryptable.push(u.from.user));
    b.messenger.start();
    await until(() => b.messenger.isOnline, "bob online");
    const [aliceSocket, mallorySocket] = await Promise.all([a.client.connect(), m.client.connect()]);
    const text = (t: string) => JSON.stringify({ v: 1, t: "text", text: t });
    const [readable, unreadable] = [crypto.randomUUID(), crypto.randomUUID()];
    // Mallory first: a message Bob can read, and one he cannot (not a Signal message at all).
    const fromMallory = await m.client.encrypt(b.client.userId, text("mallory's, same id"));
    expect((await mallorySocket.sendToUser(readable, b.client.userId, fromMallory)).type).toBe("accepted");
    const junk = [{ deviceId: 1, type: 3 as const, body: Buffer.from("not signal").toString("base64") }];
    expect((await mallorySocket.sendToUser(unreadable, b.client.userId, junk)).type).toBe("accepted");
    await until(() => b.received.length === 1 && undecryptable.length === 1, "mallory's two messages");
    // Then Alice, with the same two ids.
    for (const [id, t] of [
      [readable, "alice's first"],
      [unreadable, "alice's second"],
    ] as const) {
      const messages = await a.client.encrypt(b.client.userId, text(t));
      expect((await aliceSocket.sendToUser(id, b.client.userId, messages)).type).toBe("accepted");
    }
    await until(() => b.received.length === 3, "alice's two messages");
    expect(b.received.map((r) => [r.id, r.from.userId, r.text])).toEqual([
      [readable, m.client.userId, "mallory's, same id"],
      [readable, a.client.userId, "alice's first"],
      [unreadable, a.client.userId, "alice's second"],
    ]);
    expect(b.messenger.history(a.client.userId).map((r) => [r.id, r.text])).toEqual([
      [readable, "alice's first"],
      [unreadable, "alice's second"],
    ]);
    expect(b.messenger.history(m.client.userId).map((r) => [r.id, r.text])).toEqual([
      [readable, "mallory's, same id"],
    ]);
    b.messenger.stop();
    aliceSocket.close();
    mallorySocket.close();
    for (const c of [a, b, m]) c.client.close();
  });

  test("a message handled before the store keyed ids by sender, and redelivered after, is acked and not handled again", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    const undecryptable: string[] = [];
    b.messenger.on("undecryptable", (u) => undecryptable.push(u.id));
    const text = (t: string) => JSON.stringify({ v: 1, t: "text", text: t });
    const [handledBefore, fresh] = [crypto.randomUUID(), crypto.randomUUID()];
    // Bob's store as the version before left it: the bare id of a message it handled, whose ack
    // never reached the server.
    b.client.store.db.query("insert into received (id, at) values (?, ?)").run(handledBefore, Date.now());
    const aliceSocket = await a.client.connect();
    for (const [id, t] of [
      [handledBefore, "handled before the upgrade"],
      [fresh, "new"],
    ] as const) {
      const messages = await a.client.encrypt(b.client.userId, text(t));
      expect((await aliceSocket.sendToUser(id, b.client.userId, messages)).type).toBe("accepted");
    }
    b.messenger.start();
    await until(() => b.received.length === 1, "alice's new message");
    expect(b.received.map((r) => [r.id, r.text])).toEqual([[fresh, "new"]]);
    expect(undecryptable).toEqual([]);
    // Both were acked: a new socket is given neither again.
    b.messenger.stop();
    await until(() => !b.messenger.isOnline, "bob offline");
    const bobSocket = await b.client.connect();
    const got: string[] = [];
    bobSocket.on("message", (m: { id: string }) => got.push(m.id));
    const probe = crypto.randomUUID();
    const messages = await a.client.encrypt(b.client.userId, text("probe"));
    expect((await aliceSocket.sendToUser(probe, b.client.userId, messages)).type).toBe("accepted");
    await until(() => got.includes(probe), "the probe");
    expect(got).toEqual([probe]);
    bobSocket.close();
    aliceSocket.close();
    for (const c of [a, b]) c.client.close();
  });

  test("sends made offline are queued, survive a restart of the client, and arrive in order", async () => {
    const storePath = join(dir, "queued-alice.db");
    const a = await chatter(node.url, "alice", { storePath });
    const b = await chatter(node.url, "bob");
    // Alice is offline (never started): her sends wait in the outbox.
    for (const text of ["one", "two", "three"]) await a.messenger.sendText(b.username, text);
    expect(a.messenger.queued).toBe(3);
    a.messenger.stop();
    a.client.close();

    // Her client restarts from the store; Bob comes online only later: both sides catch up in order.
    const client = ClearBoxClient.open({ storePath });
    const messenger = new Messenger(client, { minDelayMs: 50, maxDelayMs: 500 });
    expect(messenger.queued).toBe(3);
    messenger.start();
    await until(() => messenger.queued === 0, "the outbox to drain");
    b.messenger.start();
    await until(() => b.received.length === 3, "three messages");
    expect(b.received.map((m) => m.text)).toEqual(["one", "two", "three"]);
    messenger.stop();
    b.messenger.stop();
    client.close();
    b.client.close();
  });

  test("a client closed while messages are still being received raises no unhandled rejection", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    // Bob is offline: five messages wait for him, and reach him in one drain.
    a.messenger.start();
    for (const text of ["1", "2", "3", "4", "5"]) await a.messenger.sendText(b.username, text);
    await until(() => a.messenger.queued === 0, "alice's sends");
    const errors: unknown[] = [];
    const record = (reason: unknown) => errors.push(reason);
    process.on("unhandledRejection", record);
    try {
      // He signs out as the first one is shown: the store closes with the others still queued
      // behind it for decryption.
      b.messenger.on("message", () => {
        b.messenger.stop();
        b.client.close();
      });
      b.messenger.start();
      await until(() => b.received.length > 0, "bob's first message");
      await Bun.sleep(200);
      expect(b.received.map((m) => m.text)).toEqual(["1"]);
      expect(errors).toEqual([]);
    } finally {
      process.off("unhandledRejection", record);
      a.messenger.stop();
      a.client.close();
    }
  });

  test("after the network drops, the socket reconnects by itself and messages flow again", async () => {
    const proxy = await startTcpProxy(node.url);
    try {
      const a = await chatter(proxy.url, "alice");
      const b = await chatter(node.url, "bob");
      a.messenger.start();
      b.messenger.start();
      await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
      await a.client.findUser(b.username); // a contact known before the network goes

      proxy.refuse(true);
      proxy.cut();
      await until(() => !a.messenger.isOnline, "alice to notice the drop");
      await a.messenger.sendText(b.username, "sent while down");
      await b.messenger.sendText(a.username, "waiting for you");
      await Bun.sleep(0);
      expect(a.messenger.queued).toBe(1);
      proxy.refuse(false);
      await until(
        () => b.received.length === 1 && a.received.length === 1,
        "both messages after reconnecting",
      );
      expect(b.received[0].text).toBe("sent while down");
      expect(a.received[0].text).toBe("waiting for you");
      expect(a.statuses.filter((s) => s === "online").length).toBeGreaterThanOrEqual(2);
      a.messenger.stop();
      b.messenger.stop();
      a.client.close();
      b.client.close();
    } finally {
      await proxy.close();
    }
  });

  test("a listener survives a restart of the server: it reconnects and gets what was sent meanwhile", async () => {
    // A node of its own, restarted on the same port and data directory.
    const first = await startTestNode("pglite", { keepData: true });
    const port = new URL(first.url).port;
    const a = await chatter(first.url, "alice");
    const b = await chatter(first.url, "bob");
    let restarted: TestNode | undefined;
    try {
      a.messenger.start();
      b.messenger.start();
      await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
      await a.client.findUser(b.username);
      await first.stop();
      await until(() => !b.messenger.isOnline && !a.messenger.isOnline, "both to see the node go");
      await a.messenger.sendText(b.username, "sent while the server was down");
      restarted = await startTestNode("pglite", { dataDir: first.dataDir, env: { PORT: port } });
      await until(() => b.received.length === 1, "the message after the restart");
      expect(b.received[0].text).toBe("sent while the server was down");
      expect(b.statuses.filter((s) => s === "online").length).toBeGreaterThanOrEqual(2);
    } finally {
      a.messenger.stop();
      b.messenger.stop();
      a.client.close();
      b.client.close();
      await restarted?.teardown();
      rmSync(first.dataDir, { recursive: true, force: true });
    }
  });

  test("a listener whose access token the restarted server refuses (a new JWT_SECRET) refreshes it and reconnects", async () => {
    // A restore into a new DATA_DIR generates a new JWT_SECRET: every access token in circulation
    // is refused (401 on the upgrade) long before it expires (the default 15 minutes), while the
    // refresh tokens, in the database, still work. The Messenger must refresh, not retry the
    // refused token until it expires.
    const first = await startTestNode("pglite", { keepData: true });
    const port = new URL(first.url).port;
    const a = await chatter(first.url, "alice");
    const b = await chatter(first.url, "bob");
    let restarted: TestNode | undefined;
    try {
      a.messenger.start();
      b.messenger.start();
      await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
      await a.client.findUser(b.username);
      await first.stop();
      await until(() => !b.messenger.isOnline && !a.messenger.isOnline, "both to see the node go");
      restarted = await startTestNode("pglite", {
        dataDir: first.dataDir,
        env: { PORT: port, JWT_SECRET: "another-jwt-secret-after-a-restore-0123456789" },
      });
      await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online again", 60_000);
      await a.messenger.sendText(b.username, "after the new secret");
      await until(() => b.received.length === 1, "the message after the restart");
      expect(b.received[0].text).toBe("after the new secret");
    } finally {
      a.messenger.stop();
      b.messenger.stop();
      a.client.close();
      b.client.close();
      await restarted?.teardown();
      rmSync(first.dataDir, { recursive: true, force: true });
    }
  });

  test("safety numbers match on both sides; a changed identity key raises identityChanged until verified", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    a.messenger.start();
    b.messenger.start();
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    await a.messenger.sendText(b.username, "hello");
    await until(() => b.received.length === 1, "first message");

    const aSide = a.client.safetyNumbers(b.client.userId);
    const bSide = b.client.safetyNumbers(a.client.userId);
    expect(aSide).toHaveLength(1);
    expect(aSide[0].safetyNumber).toMatch(/^(\d{5} ){11}\d{5}$/);
    expect(aSide[0].safetyNumber).toBe(bSide[0].safetyNumber);
    expect(aSide[0]).toMatchObject({ verified: false, changed: false });
    a.client.markVerified(b.client.userId);
    expect(a.client.safetyNumbers(b.client.userId)[0]).toMatchObject({ verified: true, changed: false });
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: true, changed: false });

    // Bob's device gets a new identity key (a reinstall, or a server swapping keys): new key pair,
    // sessions dropped, keys uploaded again under the same device.
    b.messenger.stop();
    const store = b.client.store;
    store.set("identityKeyPair", Buffer.from(IdentityKeyPair.generate().serialize()).toString("base64"));
    store.db.exec("delete from sessions");
    await b.client.bootstrapKeys(5);
    const b2 = new Messenger(b.client, { minDelayMs: 50 });
    b2.start();
    await until(() => b2.isOnline, "bob back");
    await b2.sendText(a.username, "new phone who dis");
    await until(() => a.received.length === 1, "bob's message under the new key");
    expect(a.changes).toEqual([
      { userId: b.client.userId, username: b.username, deviceId: b.client.deviceId },
    ]);
    const after = a.client.safetyNumbers(b.client.userId)[0];
    expect(after).toMatchObject({ verified: false, changed: true });
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: false, changed: true });
    expect(after.safetyNumber).not.toBe(aSide[0].safetyNumber);
    expect(after.safetyNumber).toBe(b.client.safetyNumbers(a.client.userId)[0].safetyNumber);
    a.client.markVerified(b.client.userId);
    expect(a.client.safetyNumbers(b.client.userId)[0]).toMatchObject({ verified: true, changed: false });
    a.messenger.stop();
    b2.stop();
    a.client.close();
    b.client.close();
  });

  test("a device new to a verified contact (a new login, or one a server added) raises identityChanged until verified", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    a.messenger.start();
    b.messenger.start();
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    await a.messenger.sendText(b.username, "hello");
    await until(() => b.received.length === 1, "first message");
    a.client.markVerified(b.client.userId);
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: true, changed: false });
    // Bob's account gets a second device, with a key of its own that alice never compared.
    const laptop = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await laptop.login(b.username, password, "laptop");
    const sent = await a.messenger.sendText(b.username, "to both devices");
    await until(
      () => a.messenger.history(b.client.userId).some((m) => m.id === sent.id && m.state === "sent"),
      "sent",
    );
    expect(a.changes).toEqual([{ userId: b.client.userId, username: b.username, deviceId: laptop.deviceId }]);
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: false, changed: true });
    expect(a.client.safetyNumbers(b.client.userId).map((n) => [n.deviceId, n.verified, n.changed])).toEqual([
      [b.client.deviceId, true, false],
      [laptop.deviceId, false, true],
    ]);
    a.client.markVerified(b.client.userId);
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: true, changed: false });
    // A contact never verified: a new device of theirs is just a device (nothing was vouched for).
    const c = await chatter(node.url, "carol");
    await a.messenger.sendText(c.username, "hi carol");
    const carolLaptop = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await carolLaptop.login(c.username, password, "laptop");
    const toCarol = await a.messenger.sendText(c.username, "to carol's devices");
    await until(
      () => a.messenger.history(c.client.userId).some((m) => m.id === toCarol.id && m.state === "sent"),
      "sent to carol",
    );
    expect(a.changes).toHaveLength(1);
    a.messenger.stop();
    b.messenger.stop();
    for (const x of [a.client, b.client, c.client, laptop, carolLaptop]) x.close();
  });

  test("confirming the numbers compared vouches for those devices only, not for one added while they were compared", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    a.messenger.start();
    b.messenger.start();
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    await a.messenger.sendText(b.username, "hello");
    await until(() => b.received.length === 1, "first message");
    // Alice is shown bob's number and compares it with him...
    const shown = a.client.safetyNumbers(b.client.userId);
    expect(shown.map((n) => n.deviceId)).toEqual([b.client.deviceId]);
    // ...while a device is added to bob's account (a server can), which her next send learns of.
    const added = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await added.login(b.username, password, "added");
    const sent = await a.messenger.sendText(b.username, "meanwhile");
    await until(
      () => a.messenger.history(b.client.userId).some((m) => m.id === sent.id && m.state === "sent"),
      "sent",
    );
    // Bob was not verified yet: a device of his is just a device, nothing to warn of.
    expect(a.changes).toEqual([]);
    // Her confirmation vouches for the number she compared, not for the device she never saw, which
    // is now a change to compare (she vouches for bob from here on), as for a device added later.
    const left = a.client.markVerified(b.client.userId, shown);
    expect(a.client.safetyNumbers(b.client.userId).map((n) => [n.deviceId, n.verified, n.changed])).toEqual([
      [b.client.deviceId, true, false],
      [added.deviceId, false, true],
    ]);
    expect(left).toEqual([added.deviceId]);
    expect(a.changes.map((c) => c.deviceId)).toEqual([added.deviceId]);
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: false, changed: true });
    // Compared again, all of them: verified.
    expect(a.client.markVerified(b.client.userId, a.client.safetyNumbers(b.client.userId))).toEqual([]);
    expect(a.client.trustOf(b.client.userId)).toEqual({ verified: true, changed: false });
    a.messenger.stop();
    b.messenger.stop();
    for (const x of [a.client, b.client, added]) x.close();
  });

  test("a member device without the sender's key asks the sender for it and reads what follows", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    const unreadable: string[] = [];
    b.messenger.on("undecryptable", (u) => unreadable.push(u.id));
    for (const x of [a, b]) x.messenger.start();
    await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
    const groupId = await a.messenger.createGroup("pair", [b.username]);
    await b.client.http.acceptInvitation(groupId);
    await a.messenger.sendGroupText(groupId, "first");
    await until(() => b.received.length === 1, "the first group message");

    // Bob's device loses the sender keys it held (as a device added later has none).
    b.client.store.db.exec("delete from sender_keys");
    await a.messenger.sendGroupText(groupId, "unreadable");
    await until(() => unreadable.length === 1, "the message Bob cannot read");
    const keys = () =>
      b.client.store.db.query<{ n: number }, []>("select count(*) as n from sender_keys").get()?.n ?? 0;
    await until(() => keys() > 0, "Alice's answer with her sender key");
    await a.messenger.sendGroupText(groupId, "after the request");
    await until(() => b.received.length === 2, "the message after the key came");
    expect(b.received.map((m) => m.text)).toEqual(["first", "after the request"]);
    for (const x of [a, b]) {
      x.messenger.stop();
      x.client.close();
    }
  });

  test("a group of three exchanges messages; a member who left cannot read what follows", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    const c = await chatter(node.url, "carol");
    for (const x of [a, b, c]) x.messenger.start();
    await until(() => [a, b, c].every((x) => x.messenger.isOnline), "all online");
    const groupId = await a.messenger.createGroup("trio", [b.username, c.username]);
    // Membership takes consent: both accept the invitation first.
    for (const x of [b, c]) await x.client.http.acceptInvitation(groupId);
    await a.messenger.sendGroupText(groupId, "hello group");
    await until(() => b.received.length === 1 && c.received.length === 1, "group message");
    expect(b.received[0]).toMatchObject({
      group: groupId,
      text: "hello group",
      from: { username: a.username },
    });
    await c.messenger.sendGroupText(groupId, "carol here");
    await until(() => a.received.length === 1 && b.received.length === 2, "carol's group message");
    expect(a.received[0]).toMatchObject({ group: groupId, from: { username: c.username } });

    // Carol is removed: Alice's next group message goes out under a new sender key she never got.
    await a.client.http.removeGroupMember(groupId, c.client.userId);
    await a.messenger.sendGroupText(groupId, "without carol");
    await until(() => b.received.length === 3, "the message after carol left");
    expect(b.received[2].text).toBe("without carol");
    expect(c.received.map((m) => m.text)).toEqual(["hello group"]);
    for (const x of [a, b, c]) {
      x.messenger.stop();
      x.client.close();
    }
  });
});

describe("messenger past the account's daily storage quota", () => {
  let node: TestNode;
  beforeAll(async () => {
    // 1 KiB: less than one PQXDH prekey message, so the first send is past it.
    node = await startTestNode("pglite", { env: { STORED_BYTES_PER_ACCOUNT_PER_DAY: "1024" } });
  });
  afterAll(() => node?.teardown());

  test("a send refused rate_limited for the rest of the day fails at once instead of waiting a day", async () => {
    const a = await chatter(node.url, "alice");
    const b = await chatter(node.url, "bob");
    a.messenger.start();
    await until(() => a.messenger.isOnline, "alice online");
    await a.messenger.sendText(b.username, "x".repeat(2000));
    await until(
      () => a.messenger.history(b.client.userId).some((m) => m.state === "failed"),
      "the message to fail",
    );
    expect(a.messenger.history(b.client.userId).map((m) => m.state)).toEqual(["failed"]);
    a.messenger.stop();
    a.client.close();
    b.client.close();
  });
});
