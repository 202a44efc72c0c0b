import { heapStats } from "bun:jsc";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type Api, api, registerAndLogin, relate } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const randomIds = (n: number) => Array.from({ length: n }, () => randomUUID());

/**
 * A bare client that counts presence frames without keeping them: the server runs in this process,
 * so a client that stored 300,000 frames would hide the server's heap under its own.
 */
async function countingSocket(baseUrl: string, token: string) {
  const ws = new WebSocket(new URL("/v1/ws", baseUrl.replace(/^http/, "ws")).toString(), {
    headers: { authorization: `Bearer ${token}` },
  } as unknown as string[]);
  let presence = 0;
  let waiting: { count: number; resolve: () => void } | undefined;
  let ponged: (() => void) | undefined;
  ws.addEventListener("message", (event) => {
    const text = String(event.data);
    if (text === '{"type":"pong"}') ponged?.();
    if (!text.startsWith('{"type":"presence"')) return;
    presence++;
    if (waiting && presence >= waiting.count) waiting.resolve();
  });
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", reject, { once: true });
  });
  return {
    send: (frame: unknown) => ws.send(JSON.stringify(frame)),
    /** Sends a ping and waits for its pong: every earlier frame has been handled. */
    async ping() {
      const pong = new Promise<void>((resolve) => {
        ponged = resolve;
      });
      ws.send('{"type":"ping"}');
      await pong;
    },
    /** Sends one watch list and waits for the state of every user on it. */
    async watch(users: string[]) {
      const count = presence + users.length;
      const answered = new Promise<void>((resolve) => {
        waiting = { count, resolve };
      });
      ws.send(JSON.stringify({ type: "presence.watch", users }));
      await answered;
    },
    close: () =>
      new Promise<void>((resolve) => {
        ws.addEventListener("close", () => resolve(), { once: true });
        ws.close(1000, "done");
      }),
  };
}

/** Until `check` holds, polling (close bookkeeping runs on a later turn). */
async function eventually(check: () => boolean, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await Bun.sleep(10);
  }
}

/** The JS heap after a full collection, in bytes. */
function heapAfterGc(): number {
  Bun.gc(true);
  Bun.gc(true);
  return heapStats().heapSize;
}

describe("presence watch lists are bounded and freed", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      env: {
        DEVICE_RATE_LIMIT: "1000000",
        PRESENCE_WATCHES_PER_NODE: "1500",
        PRESENCE_WATCHES_PER_ACCOUNT: "1000",
      },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("300 watch lists of 1,000 random ids: the node holds only the current list, and the heap returns to its baseline after the close", async () => {
    const me = await registerAndLogin(client);
    const socket = await countingSocket(node.url, me.accessToken);
    // Warm up (code paths compiled, buffers grown) before the baseline.
    for (let i = 0; i < 5; i++) await socket.watch(randomIds(1000));
    // An empty list answers nothing: the pong says it was handled.
    socket.send({ type: "presence.watch", users: [] });
    await socket.ping();
    const baseline = heapAfterGc();
    let largest = { users: 0, entries: 0, remembered: 0 };
    for (let i = 0; i < 300; i++) {
      await socket.watch(randomIds(1000));
      const stats = node.gateway.watchStats();
      if (stats.remembered > largest.remembered || stats.users > largest.users) largest = stats;
    }
    // A replaced list frees its entries at once: never more than one list's worth.
    expect(largest).toEqual({ users: 1000, entries: 1000, remembered: 1000 });
    await socket.close();
    await eventually(() => node.gateway.watchStats().entries === 0);
    expect(node.gateway.watchStats()).toEqual({ users: 0, entries: 0, remembered: 0 });
    const after = heapAfterGc();
    const grownMiB = (after - baseline) / (1 << 20);
    // 300,000 remembered ids would be tens of MiB (the issue saw 330 MB → 1 GB); noise is a few.
    expect(grownMiB).toBeLessThan(8);
  }, 120_000);

  test("one account's devices together hold at most PRESENCE_WATCHES_PER_ACCOUNT entries; other accounts keep their share", async () => {
    const alice = await registerAndLogin(client);
    const second = await client.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      registrationId: 4243,
    });
    expect(second.status).toBe(201);
    const aliceTwo = second.body as { deviceId: number; accessToken: string };
    expect(aliceTwo.deviceId).not.toBe(alice.deviceId);
    const one = await TestSocket.open(node.url, alice.accessToken);
    const two = await TestSocket.open(node.url, aliceTwo.accessToken);
    one.send({ type: "presence.watch", users: randomIds(800) });
    await eventually(() => node.gateway.watchStats().entries === 800);
    // 800 + 300 > 1,000: refused for the account, though the node (1,500) has room; the list stays.
    const first = randomIds(100);
    two.send({ type: "presence.watch", users: first });
    await eventually(() => node.gateway.watchStats().entries === 900);
    two.send({ type: "presence.watch", users: randomIds(300) });
    const refused = await two.next((f) => f.type === "error");
    expect(refused.code).toBe("rate_limited");
    expect(String(refused.message)).toContain("your devices");
    expect(node.gateway.watchStats().entries).toBe(900);
    // Replacing a list counts the new one instead of the old: 800 + 200 = 1,000 is taken.
    two.send({ type: "presence.watch", users: randomIds(200) });
    await eventually(() => node.gateway.watchStats().entries === 1000);
    // Another account's list fits in the node's room the first account could not take.
    const bob = await registerAndLogin(client);
    const b = await TestSocket.open(node.url, bob.accessToken);
    b.send({ type: "presence.watch", users: randomIds(500) });
    await eventually(() => node.gateway.watchStats().entries === 1500);
    // A closed device gives its share back to the account.
    await one.close();
    await eventually(() => node.gateway.watchStats().entries === 700);
    await b.close();
    await eventually(() => node.gateway.watchStats().entries === 200);
    two.send({ type: "presence.watch", users: randomIds(1000) });
    await eventually(() => node.gateway.watchStats().entries === 1000);
    await two.close();
    await eventually(() => node.gateway.watchStats().entries === 0);
  }, 60_000);

  test("a list that would take the node past PRESENCE_WATCHES_PER_NODE is refused and the previous list stays", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    await relate(client, bob, alice);
    const a = await TestSocket.open(node.url, alice.accessToken);
    const b = await TestSocket.open(node.url, bob.accessToken);
    a.send({ type: "presence.watch", users: randomIds(1000) });
    await eventually(() => node.gateway.watchStats().entries === 1000);
    const kept = [alice.userId, ...randomIds(399)];
    b.send({ type: "presence.watch", users: kept });
    await eventually(() => node.gateway.watchStats().entries === 1400);
    b.send({ type: "presence.watch", users: randomIds(1000) });
    const refused = await b.next((f) => f.type === "error");
    expect(refused.code).toBe("rate_limited");
    expect(node.gateway.watchStats().entries).toBe(1400);
    // The previous list still works: alice going away reaches bob.
    await a.close();
    const offline = await b.next((f) => f.type === "presence" && f.user === alice.userId && !f.online);
    expect(offline.online).toBe(false);
    await eventually(() => node.gateway.watchStats().entries === 400);
    b.send({ type: "presence.watch", users: randomIds(1000) });
    await eventually(() => node.gateway.watchStats().entries === 1000);
    await b.close();
  });

  test("a list naming one user many times holds one entry; over 1,000 users is invalid", async () => {
    const me = await registerAndLogin(client);
    const socket = await TestSocket.open(node.url, me.accessToken);
    const one = randomUUID();
    socket.send({
      type: "presence.watch",
      users: [...Array(500).fill(one), ...Array(500).fill(one.toUpperCase())],
    });
    await eventually(() => node.gateway.watchStats().entries === 1);
    socket.send({ type: "presence.watch", users: randomIds(1001) });
    expect((await socket.next((f) => f.type === "error")).code).toBe("invalid");
    expect(node.gateway.watchStats().entries).toBe(1);
    await socket.close();
    await eventually(() => node.gateway.watchStats().entries === 0);
  });
});

describe("a presence.watch costs one token per 100 users", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "1" } });
  });
  afterAll(() => node?.teardown());

  test("with a burst of 2 tokens, a list of 200 users (3 tokens) is refused while a ping still passes", async () => {
    const me = await registerAndLogin(api(node.url));
    const socket = await TestSocket.open(node.url, me.accessToken);
    socket.send({ type: "presence.watch", users: randomIds(200) });
    const refused = await socket.next((f) => f.type === "error");
    expect(refused.code).toBe("rate_limited");
    expect(node.gateway.watchStats().entries).toBe(0);
    socket.send({ type: "ping" });
    expect((await socket.next((f) => f.type === "pong")).type).toBe("pong");
    await socket.close();
  });
});
