import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import Redis from "ioredis";
import { ListChangeChannel } from "../../src/messaging/list-changes.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { REDIS_URL, runPrefix, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { OwnRedis } from "../support/own-redis.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { TestSocket } from "../support/ws.ts";

/** Polls `condition` every 20 ms until it holds; throws after `ms`. */
async function until(what: string, condition: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/**
 * Two nodes on one PostgreSQL database and one Redis: a device or block change made through node A
 * reaches node B's cached lists over the list-change channel (src/messaging/list-changes.ts), so a
 * send on B right after the change's reply sees it. Without the channel B would use its cached list
 * for up to a second (devices) or five (blocks), and these sends would be answered from it.
 */
describe("device and block changes across two nodes", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let a: TestNode;
  let b: TestNode;
  let clientA: Api;

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = { ...stackEnv("services", prefix), DEVICE_RATE_LIMIT: "100000" };
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "lists-a" } });
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "lists-b" } });
    clientA = api(a.url);
    // And A knowing B as a peer: a change made through A is waited for on B from then on.
    await until("both nodes' list-change channels", () =>
      Boolean(
        a.listChanges?.live && b.listChanges?.live && a.listChanges.acknowledgingPeers.includes("lists-b"),
      ),
    );
  });
  afterAll(async () => {
    await a?.teardown();
    await b?.teardown();
    await database?.drop();
  });

  async function send(socket: TestSocket, to: string, devices: number[]) {
    const id = randomUUID();
    const body = Buffer.from(id).toString("base64");
    socket.send({
      type: "send",
      id,
      to: { user: to },
      messages: devices.map((deviceId) => ({ deviceId, type: 3, body })),
    });
    return { id, reply: await socket.reply(id) };
  }

  async function stored(recipient: string): Promise<string[]> {
    return (await b.log.metadataOf(recipient)).filter((m) => m.recipientUser === recipient).map((m) => m.id);
  }

  test("a device added through node A is required at once by a send on node B", async () => {
    const alice = await registerAndLogin(clientA);
    const bob = await registerAndLogin(clientA);
    const onB = await TestSocket.open(b.url, alice.accessToken);
    // Caches bob's list [1] on B.
    expect((await send(onB, bob.userId, [1])).reply.type).toBe("accepted");
    expect((await loginDevice(clientA, bob, { registrationId: 77 })).deviceId).toBe(2);
    const { id, reply } = await send(onB, bob.userId, [1]);
    expect(reply).toEqual({ type: "rejected", id, code: "mismatched_devices", missing: [2], extra: [] });
    expect((await send(onB, bob.userId, [1, 2])).reply.type).toBe("accepted");
    // And a removal through A: device 2 is refused on B at once.
    expect((await clientA.delete("/v1/devices/2", bob.accessToken)).status).toBe(204);
    const removed = await send(onB, bob.userId, [1, 2]);
    expect(removed.reply).toEqual({
      type: "rejected",
      id: removed.id,
      code: "mismatched_devices",
      missing: [],
      extra: [2],
    });
    await onB.close();
  });

  test("a block made through node A stops the next send on node B, and lifting it lets one through", async () => {
    const alice = await registerAndLogin(clientA);
    const bob = await registerAndLogin(clientA);
    const onB = await TestSocket.open(b.url, alice.accessToken);
    const before = await send(onB, bob.userId, [1]);
    expect(before.reply.type).toBe("accepted");
    expect(await stored(bob.userId)).toEqual([before.id]);

    expect((await clientA.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    const blocked = await send(onB, bob.userId, [1]);
    expect(blocked.reply).toMatchObject({ type: "accepted", id: blocked.id });
    expect(await stored(bob.userId)).toEqual([before.id]);

    expect((await clientA.delete(`/v1/blocks/${alice.userId}`, bob.accessToken)).status).toBe(204);
    const after = await send(onB, bob.userId, [1]);
    expect(after.reply.type).toBe("accepted");
    expect(await stored(bob.userId)).toEqual([before.id, after.id]);
    await onB.close();
  });
});

/**
 * The channel with node B's Redis connection cut (a TCP proxy between B and a private
 * redis-server): B stops counting as live at once (its lists fall back to the TTLs), a change
 * published meanwhile never reaches it, and once it hears the channel again it forgets every
 * cached list before anything else.
 */
describe("the list-change channel with its Redis cut", () => {
  let server: OwnRedis;
  let proxy: TcpProxy;
  let redisA: Redis;
  let redisB: Redis;
  let channelA: ListChangeChannel;
  let channelB: ListChangeChannel;
  const heard: string[] = [];
  const logger = createLogger({ level: "silent", nodeId: "test" });
  const recorder = (into: string[]) => ({
    devicesChanged: (user: string) => void into.push(`devices ${user}`),
    blocksChanged: (blocker: string, blocked: string) => void into.push(`blocks ${blocker} ${blocked}`),
    forgetLists: () => void into.push("forget"),
  });

  beforeAll(async () => {
    server = await OwnRedis.start();
    proxy = await startTcpProxy(server.url);
    const options = { maxRetriesPerRequest: 2, retryStrategy: () => 50 };
    redisA = new Redis(server.url, options);
    redisB = new Redis(proxy.url, options);
    redisB.on("error", () => {});
    channelA = new ListChangeChannel(redisA, "lc:", "node-a", recorder([]), logger);
    channelB = new ListChangeChannel(redisB, "lc:", "node-b", recorder(heard), logger);
    await channelA.start();
    await channelB.start();
  });
  afterAll(async () => {
    await channelA?.close();
    await channelB?.close();
    redisA?.disconnect();
    redisB?.disconnect();
    await proxy?.close();
    await server?.kill();
  });

  test("a cut subscription is not live, misses what is published, and forgets every list when it is back", async () => {
    await until("both channels live", () => channelA.live && channelB.live);
    await channelA.publishDevices("u1");
    await channelA.publishBlocks("u1", "u2");
    await until("B hearing A's changes", () => heard.includes("blocks u1 u2"));
    expect(heard.filter((h) => h !== "forget")).toEqual(["devices u1", "blocks u1 u2"]);
    // B's own changes are applied by B before it publishes them: not told again.
    await channelB.publishDevices("u9");
    await channelA.publishDevices("u3");
    await until("B hearing u3", () => heard.includes("devices u3"));
    expect(heard).not.toContain("devices u9");

    proxy.refuse(true);
    proxy.cut();
    await until("B's channel counting as down", () => !channelB.live);
    const before = heard.length;
    await channelA.publishDevices("lost");
    await Bun.sleep(300);
    expect(heard.length).toBe(before);

    proxy.refuse(false);
    await until("B's channel live again", () => channelB.live);
    const after = heard.slice(before);
    // The change published while B was away is lost, so B dropped everything it had cached.
    expect(after).toContain("forget");
    expect(after).not.toContain("devices lost");
    await channelA.publishDevices("u4");
    await until("B hearing u4", () => heard.includes("devices u4"));
  });
});

/**
 * Redis taking a publication is not another node having read it. Node B's Redis connection delivers
 * 150 ms late (a TCP proxy): a publication on A resolves only once B has applied the change and
 * acknowledged it, so whatever A's caller does next (answer HTTP; a client's next send on B) comes
 * after B dropped its list.
 */
describe("the list-change channel waits for every live peer's acknowledgement", () => {
  let proxy: TcpProxy;
  let redisA: Redis;
  let redisB: Redis;
  let channelA: ListChangeChannel;
  let channelB: ListChangeChannel;
  const heardB: string[] = [];
  const logger = createLogger({ level: "silent", nodeId: "test" });
  const prefix = `${runPrefix()}ack:`;

  beforeAll(async () => {
    proxy = await startTcpProxy(REDIS_URL, { toClientDelayMs: 150 });
    redisA = new Redis(REDIS_URL);
    redisB = new Redis(proxy.url);
    const ignore = { devicesChanged() {}, blocksChanged() {}, forgetLists() {} };
    channelA = new ListChangeChannel(redisA, prefix, "ack-a", ignore, logger);
    channelB = new ListChangeChannel(
      redisB,
      prefix,
      "ack-b",
      {
        devicesChanged: (user) => void heardB.push(`devices ${user}`),
        blocksChanged: (blocker, blocked) => void heardB.push(`blocks ${blocker} ${blocked}`),
        forgetLists: () => {},
      },
      logger,
    );
    await channelA.start();
    await channelB.start();
  });
  afterAll(async () => {
    await channelA?.close();
    await channelB?.close();
    redisA?.disconnect();
    redisB?.disconnect();
    await proxy?.close();
  });

  test("a device or block change published on A has been applied on B when the publication resolves", async () => {
    await until("both channels live, and A knowing B", () =>
      Boolean(channelA.live && channelB.live && channelA.acknowledgingPeers.includes("ack-b")),
    );
    await channelA.publishBlocks("u1", "u2");
    expect(heardB).toEqual(["blocks u1 u2"]);
    await channelA.publishDevices("u3");
    expect(heardB).toEqual(["blocks u1 u2", "devices u3"]);
  });
});

/**
 * Which peers a publication waits for. Node A's clock is frozen, so a peer it once heard never ages
 * out of its waits (LIVENESS_MS): only what the peer says on the channel can take it out. A peer
 * that cannot hear the channel (its subscriber connection refused while its publishing one works)
 * acknowledges nothing, so it must not promise to: before, its heartbeats carried the `a` all the
 * same and every change on A waited the full second for it, for as long as that lasted. A peer
 * that closes its channel says so, where A waited for it until its last heartbeat aged out.
 */
describe("the list-change channel waits only for peers that hear it", () => {
  const prefix = `${runPrefix()}peers:`;
  const logger = createLogger({ level: "silent", nodeId: "test" });
  const frozen = Date.now();
  const heardA: string[] = [];
  let refusing: TcpProxy;
  let redisA: Redis;
  let redisB: Redis;
  let redisC: Redis;
  let observer: Redis;
  let channelA: ListChangeChannel;
  const observed: string[] = [];
  const others: ListChangeChannel[] = [];
  const ignore = { devicesChanged() {}, blocksChanged() {}, forgetLists() {} };

  beforeAll(async () => {
    refusing = await startTcpProxy(REDIS_URL);
    refusing.refuse(true);
    redisA = new Redis(REDIS_URL);
    redisB = new Redis(REDIS_URL);
    redisC = new Redis(REDIS_URL);
    observer = new Redis(REDIS_URL);
    observer.on("message", (_channel: string, text: string) => void observed.push(text));
    await observer.subscribe(`${prefix}lists`);
    channelA = new ListChangeChannel(
      redisA,
      prefix,
      "peers-a",
      {
        devicesChanged: (user) => void heardA.push(`devices ${user}`),
        blocksChanged() {},
        forgetLists() {},
      },
      logger,
      () => frozen,
    );
    await channelA.start();
    await until("A's channel live", () => channelA.live);
  });
  afterAll(async () => {
    for (const channel of others) await channel.close();
    await channelA?.close();
    for (const redis of [redisA, redisB, redisC, observer]) redis?.disconnect();
    await refusing?.close();
  });

  /** Resolves once A has read everything published on the channel before this call. */
  async function aCaughtUp(): Promise<void> {
    const marker = `marker-${randomUUID()}`;
    // A change of no node A knows, without a nonce: A applies it and acknowledges nothing.
    await redisA.publish(`${prefix}lists`, `d peers-marker ${marker}`);
    await until("A reading the marker", () => heardA.includes(`devices ${marker}`));
  }

  test("a peer whose subscription cannot connect is not waited for, though A hears its heartbeats", async () => {
    // B publishes through a working connection; its subscriber's connection is refused.
    redisB.duplicate = () =>
      new Redis(refusing.url, { enableOfflineQueue: false, retryStrategy: () => 100, lazyConnect: false });
    const channelB = new ListChangeChannel(redisB, prefix, "peers-b", ignore, logger);
    others.push(channelB);
    await channelB.start();
    await until("two heartbeats of B", () => observed.filter((m) => m.startsWith("h peers-b")).length >= 2);
    await aCaughtUp();
    expect(channelB.live).toBe(false);
    expect(channelA.acknowledgingPeers).not.toContain("peers-b");
  });

  test("a peer that closes its channel is no longer waited for", async () => {
    const channelC = new ListChangeChannel(redisC, prefix, "peers-c", ignore, logger);
    others.push(channelC);
    await channelC.start();
    await until("A waiting for C", () => channelA.acknowledgingPeers.includes("peers-c"));
    await channelC.close();
    await until("A no longer waiting for C", () => !channelA.acknowledgingPeers.includes("peers-c"));
  });
});
