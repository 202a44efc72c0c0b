import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import Redis from "ioredis";
import { decodedLength, StorageQuota } from "../../src/messaging/storage-quota.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { type RateLimiter, RedisRateLimiter } from "../../src/ratelimit/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { freePort } from "../support/free-port.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { limitersUnderTest } from "../support/ratelimit.ts";
import { TEST_REDIS_URL } from "../support/redis.ts";
import { type Frame, TestSocket } from "../support/ws.ts";

/** A base64 body that decodes to `bytes` bytes (what the quota counts). */
const body = (bytes: number, fill = "x") => Buffer.from(fill.repeat(bytes)).toString("base64");
const DAY_MS = 24 * 60 * 60 * 1000;
const quiet = createLogger({ level: "fatal", nodeId: "test", format: "json" });

test("decodedLength counts the bytes a base64 body stores", () => {
  for (const n of [0, 1, 2, 3, 4, 5, 1000, 1001, 1002]) expect(decodedLength(body(n))).toBe(n);
});

describe("storage quota over each limiter", () => {
  const { limiters, prefix } = limitersUnderTest();

  describe.each(limiters)("%s", (_kind, make) => {
    test("allows bytes up to the budget, then refuses with the window's time left and keeps nothing of the refusal", async () => {
      const quota = new StorageQuota(make(), 3000, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      expect(await quota.charge(user, 2000)).toMatchObject({ allowed: true });
      const refused = await quota.charge(user, 1001);
      expect(refused.allowed).toBe(false);
      if (!refused.allowed) {
        expect(refused.retryAfterMs).toBeGreaterThan(0);
        expect(refused.retryAfterMs).toBeLessThanOrEqual(60_000);
      }
      // The refused 1001 bytes were not kept: exactly the 1000 left still fit, then nothing.
      expect(await quota.charge(user, 1000)).toMatchObject({ allowed: true });
      expect((await quota.charge(user, 1)).allowed).toBe(false);
      // Another account has a budget of its own.
      expect(await quota.charge(randomUUID(), 3000)).toMatchObject({ allowed: true });
    });

    test("a refund gives bytes back; the budget starts again once the window has passed", async () => {
      // Long enough for the five charges below to land in one window on a loaded machine (at
      // 300 ms a stall let one open the next window); waited out from the first charge's answer.
      const windowMs = 2000;
      const quota = new StorageQuota(make(), 1000, quiet, { windowMs });
      const user = randomUUID();
      expect(await quota.charge(user, 1000)).toMatchObject({ allowed: true });
      const windowEnds = Date.now() + windowMs;
      expect((await quota.charge(user, 400)).allowed).toBe(false);
      await quota.refund(user, 400);
      expect(await quota.charge(user, 400)).toMatchObject({ allowed: true });
      expect((await quota.charge(user, 1)).allowed).toBe(false);
      await Bun.sleep(Math.max(0, windowEnds - Date.now()) + 50);
      expect(await quota.charge(user, 1000)).toMatchObject({ allowed: true });
    });
  });

  describe.each(limiters)("%s, with leases (budgets of 4 MiB and more)", (_kind, make) => {
    /** The limiter, counting the hits that reach it (a hit is a Redis round trip on services). */
    const counted = () => {
      const inner = make();
      const calls = { hits: 0 };
      const limiter: RateLimiter = {
        hit: (rule, key, cost) => {
          calls.hits++;
          return inner.hit(rule, key, cost);
        },
        release: (rule, key, cost) => inner.release(rule, key, cost),
        reset: (rule, key) => inner.reset(rule, key),
        peek: (rule, key) => inner.peek(rule, key),
        forget: (fragment) => inner.forget(fragment),
      };
      return { limiter, calls };
    };
    const MIB4 = 4 * 1024 * 1024;

    test("small sends are spent from a lease: 1,000 of them reach the shared counter a few times, not 1,000", async () => {
      const { limiter, calls } = counted();
      const quota = new StorageQuota(limiter, 2 * MIB4, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      for (let i = 0; i < 1000; i++) expect(await quota.charge(user, 100)).toMatchObject({ allowed: true });
      // 100,000 bytes in leases of 8 KiB (1/1024 of the budget): 13 hits.
      expect(calls.hits).toBeLessThanOrEqual(15);
      await quota.close();
    });

    test("on one node the budget is exact: a lease is given back before a send near the budget is counted", async () => {
      const quota = new StorageQuota(make(), MIB4, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      let allowed = 0;
      while ((await quota.charge(user, 1000)).allowed) allowed += 1000;
      expect(allowed).toBe(Math.floor(MIB4 / 1000) * 1000);
      await quota.close();
    });

    test("two nodes on one counter: never past the budget, refused at most the other's lease early", async () => {
      const shared = make();
      const a = new StorageQuota(shared, MIB4, quiet, { windowMs: 60_000 });
      const b = new StorageQuota(shared, MIB4, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      let allowed = 0;
      let refusals = 0;
      for (let i = 0; refusals < 2; i++) {
        if ((await (i % 2 === 0 ? a : b).charge(user, 1000)).allowed) allowed += 1000;
        else refusals++;
      }
      expect(allowed).toBeLessThanOrEqual(MIB4);
      expect(allowed).toBeGreaterThanOrEqual(MIB4 - MIB4 / 1024 - 1000);
      await Promise.all([a.close(), b.close()]);
    });

    test("concurrent sends of one account that outrun the lease take one new lease, not one each", async () => {
      // 128 sends at once (the account's devices on one node) with no lease left: each taking a
      // lease of its own held 128 leases (32 MiB of the default budget), and another node was
      // refused that much early.
      const shared = make();
      const budget = 64 * MIB4;
      const lease = budget / 1024;
      const a = new StorageQuota(shared, budget, quiet, { windowMs: 60_000 });
      const b = new StorageQuota(shared, budget, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      const first = await Promise.all(Array.from({ length: 128 }, () => a.charge(user, 1000)));
      expect(first.every((d) => d.allowed)).toBe(true);
      let allowed = 0;
      while ((await b.charge(user, 64 * 1024)).allowed) allowed += 64 * 1024;
      // b is refused at most a's one lease (and its own last partial send) early.
      expect(allowed).toBeGreaterThanOrEqual(budget - 128 * 1000 - lease - 64 * 1024);
      await Promise.all([a.close(), b.close()]);
    });

    test("an idle lease, and every lease at close, goes back to the shared counter", async () => {
      const shared = make();
      for (const giveBack of ["idle", "close"] as const) {
        let clock = 1_000_000;
        const quota = new StorageQuota(shared, MIB4, quiet, {
          windowMs: 60_000,
          leaseIdleMs: 50,
          now: () => clock,
        });
        const user = randomUUID();
        expect(await quota.charge(user, 100)).toMatchObject({ allowed: true });
        expect(quota.leasedAccounts).toBe(1);
        if (giveBack === "idle") {
          clock += 51;
          await quota.giveBackIdle();
        } else await quota.close();
        expect(quota.leasedAccounts).toBe(0);
        // Another node may now spend all but the 100 bytes sent: nothing of the lease is still held.
        const other = new StorageQuota(shared, MIB4, quiet, { windowMs: 60_000 });
        expect(await other.charge(user, MIB4 - 100)).toMatchObject({ allowed: true });
        expect((await other.charge(user, 1)).allowed).toBe(false);
        await other.close();
        quota.abort();
      }
    });
  });

  test("a send let through while Redis was unreachable counted nothing: refunding what its charge counted mints no budget", async () => {
    const MIB4 = 4 * 1024 * 1024;
    const link = new Redis(TEST_REDIS_URL, {
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      lazyConnect: true,
      retryStrategy: () => null,
    });
    link.on("error", () => {});
    await link.connect();
    try {
      const quota = new StorageQuota(new RedisRateLimiter(link, prefix), MIB4, quiet, { windowMs: 60_000 });
      const user = randomUUID();
      // The link drops: three sends go through uncounted, and each turns out to store nothing (a
      // re-sent id, a group send its actor refused), so the service refunds what each charge counted.
      const ended = new Promise((resolve) => link.once("end", resolve));
      link.disconnect();
      await ended;
      const during = await Promise.all([1, 2, 3].map(() => quota.charge(user, 200_000)));
      for (const decision of during) {
        expect(decision.allowed).toBe(true);
        expect(decision.allowed && decision.charged).toBe(0);
        if (decision.allowed) await quota.refund(user, decision.charged);
      }
      // The link is back: this node may store the budget, and not a byte more.
      await link.connect();
      let allowed = 0;
      for (;;) {
        const decision = await quota.charge(user, 100_000);
        if (!decision.allowed) break;
        allowed += 100_000;
      }
      expect(allowed).toBeLessThanOrEqual(MIB4);
      await quota.close();
    } finally {
      link.disconnect();
    }
  });

  test("with Redis unreachable, sends are let through (the quota does not take messaging down)", async () => {
    const port = await freePort();
    const down = new Redis(`redis://127.0.0.1:${port}`, {
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      lazyConnect: true,
    });
    down.on("error", () => {});
    try {
      const quota = new StorageQuota(new RedisRateLimiter(down, prefix), 10, quiet, { windowMs: 60_000 });
      expect(await quota.charge(randomUUID(), 1000)).toMatchObject({ allowed: true });
    } finally {
      down.disconnect();
    }
  });
});

describe.each(STACKS)("storage quota of sends on the %s stack", (stack) => {
  const BUDGET = 4096;
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, prefix), STORED_BYTES_PER_ACCOUNT_PER_DAY: String(BUDGET) },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  const direct = (to: string, deviceIds: number[], bytes: number) => ({
    type: "send",
    id: randomUUID(),
    to: { user: to },
    messages: deviceIds.map((deviceId) => ({ deviceId, type: 3, body: body(bytes) })),
  });
  const sent = async (socket: TestSocket, frame: Frame) => {
    socket.send(frame);
    return socket.reply(frame.id);
  };
  const storedIds = async (userId: string) => (await node.log.metadataOf(userId)).map((m) => m.id);

  test("to one's own device that never connects: past the budget rejected rate_limited, nothing stored; other accounts unaffected", async () => {
    const alice = await registerAndLogin(client);
    await loginDevice(client, alice, { registrationId: 2 }); // device 2: never connects
    const bob = await registerAndLogin(client);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    const bobSocket = await TestSocket.open(node.url, bob.accessToken);

    // Four bodies of 1000 bytes fit in 4096; the fifth does not.
    const accepted: string[] = [];
    for (let i = 0; i < 4; i++) {
      const frame = direct(alice.userId, [2], 1000);
      expect(await sent(aliceSocket, frame)).toMatchObject({ type: "accepted" });
      accepted.push(frame.id);
    }
    const over = direct(alice.userId, [2], 1000);
    const refused = await sent(aliceSocket, over);
    expect(refused).toMatchObject({ type: "rejected", id: over.id, code: "rate_limited" });
    expect(refused.retryAfterMs).toBeGreaterThan(DAY_MS - 10 * 60_000);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(DAY_MS);
    expect((await storedIds(alice.userId)).sort()).toEqual([...accepted].sort());
    // A send to Bob is refused too: the budget is the sender's, whoever receives.
    const toBob = direct(bob.userId, [1], 200);
    expect(await sent(aliceSocket, toBob)).toMatchObject({ type: "rejected", code: "rate_limited" });
    expect(await storedIds(bob.userId)).toEqual([]);

    // Bob's budget is his own: he still sends to Alice, and she gets it.
    const fromBob = direct(alice.userId, [1, 2], 1000);
    expect(await sent(bobSocket, fromBob)).toMatchObject({ type: "accepted" });
    const [message] = await aliceSocket.messages(1);
    expect(message).toMatchObject({ id: fromBob.id, from: { user: bob.userId } });
    // The refused bytes were not kept: the 96 left still fit.
    expect(await sent(aliceSocket, direct(alice.userId, [2], 96))).toMatchObject({ type: "accepted" });
    await Promise.all([aliceSocket.close(), bobSocket.close()]);
  });

  test("a 1:1 send counts each recipient device's body; a re-sent id is not counted twice", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    await loginDevice(client, bob, { registrationId: 2 });
    await loginDevice(client, bob, { registrationId: 3 });
    const socket = await TestSocket.open(node.url, alice.accessToken);
    // 3 devices × 600 bytes = 1800 of 4096. The same id again is charged until its commit shows
    // it stored nothing new, then given back.
    const first = direct(bob.userId, [1, 2, 3], 600);
    expect(await sent(socket, first)).toMatchObject({ type: "accepted" });
    expect(await sent(socket, first)).toMatchObject({ type: "accepted", id: first.id });
    // 2296 are left: 3 × 766 = 2298 do not fit, 3 × 765 = 2295 do.
    expect(await sent(socket, direct(bob.userId, [1, 2, 3], 766))).toMatchObject({
      type: "rejected",
      code: "rate_limited",
    });
    expect(await sent(socket, direct(bob.userId, [1, 2, 3], 765))).toMatchObject({ type: "accepted" });
    await socket.close();
  });

  /** A group of `owner` with `members` (each accepted); returns its id. */
  const groupOf = async (
    owner: { accessToken: string },
    members: { userId: string; accessToken: string }[],
  ) => {
    const created = await client.post(
      "/v1/groups",
      { name: "quota", members: members.map((m) => m.userId) },
      owner.accessToken,
    );
    const { groupId } = created.body as { groupId: string };
    for (const m of members)
      expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, m.accessToken)).status).toBe(
        204,
      );
    return groupId;
  };
  const groupSend = (groupId: string, bytes: number) => ({
    type: "send",
    id: randomUUID(),
    to: { group: groupId },
    message: { type: 7, body: body(bytes) },
  });
  /** Decoded ciphertext bytes the log holds for `userIds`' devices (what the server stores for them). */
  const heldFor = async (userIds: string[]) => {
    let bytes = 0;
    for (const userId of userIds)
      for (const e of await node.log.undelivered(userId)) bytes += decodedLength(e.body);
    return bytes;
  };

  test("a group send counts its body once per recipient device (each device's row holds it); other members keep sending", async () => {
    const alice = await registerAndLogin(client);
    const members = await Promise.all(Array.from({ length: 5 }, () => registerAndLogin(client)));
    const groupId = await groupOf(alice, members);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    // 5 recipient devices × 800 = 4000 of 4096; 5 × 20 more do not fit (counted once, 20 would).
    const first = groupSend(groupId, 800);
    expect(await sent(aliceSocket, first)).toMatchObject({ type: "accepted" });
    const over = groupSend(groupId, 20);
    const refused = await sent(aliceSocket, over);
    expect(refused).toMatchObject({ type: "rejected", id: over.id, code: "rate_limited" });
    expect(refused.retryAfterMs).toBeGreaterThan(DAY_MS - 10 * 60_000);
    expect(await storedIds(alice.userId)).not.toContain(over.id);
    // What the server holds for the members is what was counted, within the budget.
    const held = await heldFor(members.map((m) => m.userId));
    expect(held).toBe(5 * 800);
    expect(held).toBeLessThanOrEqual(BUDGET);
    // The budget is the sender's: a member still sends (to Alice and the 4 others: 5 × 800).
    const memberSocket = await TestSocket.open(node.url, members[0].accessToken);
    expect(await sent(memberSocket, groupSend(groupId, 800))).toMatchObject({ type: "accepted" });
    await Promise.all([aliceSocket.close(), memberSocket.close()]);
  });

  test("a re-sent group id stores nothing new and is not counted twice", async () => {
    const alice = await registerAndLogin(client);
    const member = await registerAndLogin(client);
    const groupId = await groupOf(alice, [member]);
    const socket = await TestSocket.open(node.url, alice.accessToken);
    // One recipient device: 2000, the same id again (its answer lost) 0, then 2000 more: 4000 of 4096.
    const first = groupSend(groupId, 2000);
    expect(await sent(socket, first)).toMatchObject({ type: "accepted" });
    expect(await sent(socket, first)).toMatchObject({ type: "accepted", id: first.id });
    expect(await sent(socket, groupSend(groupId, 2000))).toMatchObject({ type: "accepted" });
    expect(await heldFor([member.userId])).toBe(4000);
    await socket.close();
  });
});

describe("storage quota across the nodes of a cluster", () => {
  let database: TestDatabase;
  const nodes: TestNode[] = [];
  beforeAll(async () => {
    database = await createTestDatabase();
    const env = { ...stackEnv("services", runPrefix()), STORED_BYTES_PER_ACCOUNT_PER_DAY: "4096" };
    for (const name of ["quota-a", "quota-b"])
      nodes.push(await startTestNode("postgres", { database, env: { ...env, NODE_ID: name } }));
  });
  afterAll(async () => {
    for (const node of nodes) await node.teardown().catch(() => undefined);
    await database?.drop();
  });

  test("one account's sockets on two nodes share one budget (Redis)", async () => {
    const [a, b] = nodes as [TestNode, TestNode];
    const client = api(a.url);
    const alice = await registerAndLogin(client);
    const second = await loginDevice(client, alice, { registrationId: 2 });
    await loginDevice(client, alice, { registrationId: 3 }); // never connects
    const onA = await TestSocket.open(a.url, alice.accessToken);
    const onB = await TestSocket.open(b.url, second.accessToken);
    const send = (socket: TestSocket, bytes: number) => {
      const frame = {
        type: "send",
        id: randomUUID(),
        to: { user: alice.userId },
        messages: [1, 2, 3]
          .filter((d) => d !== (socket === onA ? 1 : 2))
          .map((deviceId) => ({ deviceId, type: 3, body: body(bytes) })),
      };
      socket.send(frame);
      return socket.reply(frame.id);
    };
    // 2 devices × 1500 = 3000 through node a; node b's 2 × 600 = 1200 more would pass 4096.
    expect(await send(onA, 1500)).toMatchObject({ type: "accepted" });
    expect(await send(onB, 600)).toMatchObject({ type: "rejected", code: "rate_limited" });
    expect(await send(onB, 500)).toMatchObject({ type: "accepted" });
    await Promise.all([onA.close(), onB.close()]);
  });
});
