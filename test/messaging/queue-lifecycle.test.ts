import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type ChannelModel, connect } from "amqplib";
import { userKey } from "../../actors/index.ts";
import { AmqpOfflineQueue } from "../../src/messaging/amqp-offline-queue.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { sweepIdleQueues } from "../../src/messaging/queue-sweep.ts";
import { AMQP_URL, runPrefix, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { socketState, startTestNode, startTwoNodes, type TestNode } from "../support/node.ts";
import { ackOf, type Frame, sendDirect, TestSocket, waitUntil } from "../support/ws.ts";

/** Iterations of each race loop (RACE_ROUNDS in the environment: more, to chase a rare ordering). */
const RACE_ROUNDS = Number(process.env.RACE_ROUNDS ?? 50);

/** Reconnects to another node while the old socket's drain holds the device's messages. */
const RECONNECT_ROUNDS = Number(process.env.RECONNECT_ROUNDS ?? 10);

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** Whether a queue exists, asked with a passive declare on a channel of its own (404 closes it). */
async function queueExists(amqp: ChannelModel, name: string): Promise<boolean> {
  const channel = await amqp.createChannel();
  channel.on("error", () => {});
  try {
    await channel.checkQueue(name);
    return true;
  } catch (error) {
    if ((error as { code?: unknown }).code === 404) return false;
    throw error;
  } finally {
    await channel.close().catch(() => {});
  }
}

/** Declares a queue the way versions before this one left it: same arguments, kept while empty. */
async function declareLegacyQueue(amqp: ChannelModel, name: string): Promise<void> {
  const channel = await amqp.createChannel();
  await channel.assertQueue(name, {
    durable: true,
    arguments: { "x-queue-type": "classic", "x-message-ttl": 86_400_000, "x-expires": 86_400_000 },
  });
  await channel.close();
}

describe("offline queues follow the backlog (PostgreSQL, Redis, RabbitMQ)", () => {
  let node: TestNode;
  let client: Api;
  let amqp: ChannelModel;
  let offline: AmqpOfflineQueue;
  const prefix = runPrefix();
  const queueNames = new Set<string>();

  beforeAll(async () => {
    // The race loops send faster than a device's default budget of 100 frames/s.
    node = await startTestNode("postgres", {
      env: { ...stackEnv("services", prefix), DEVICE_RATE_LIMIT: "100000" },
    });
    client = api(node.url);
    amqp = await connect(AMQP_URL);
    offline = node.offline as AmqpOfflineQueue;
  });

  afterAll(async () => {
    // Whatever a failed test left behind goes too.
    for (const name of queueNames) {
      const channel = await amqp.createChannel();
      await channel.deleteQueue(name).catch(() => {});
      await channel.close().catch(() => {});
    }
    await amqp?.close();
    await node?.teardown();
  });

  async function user() {
    const session = await registerAndLogin(client);
    const queue = offline.queueName(session.userId, 1);
    queueNames.add(queue);
    return { ...session, queue };
  }

  const connectAs = (token: string) => TestSocket.open(node.url, token);

  test("a device that drains and acks everything leaves no queue behind; a partial ack keeps the rest", async () => {
    const alice = await user();
    const bob = await user();
    const a = await connectAs(alice.accessToken);
    expect(await queueExists(amqp, bob.queue)).toBe(false);
    const ids = await sendDirect(a, bob.userId, 3, "offline");
    // The first flush declared the queue; all three are in it.
    await waitUntil(async () => (await offline.depth(bob.userId, 1)) === 3, "three queued messages");

    const first = await connectAs(bob.accessToken);
    const drained = await first.messages(3);
    expect(drained.map((m) => m.id)).toEqual(ids);
    first.send(ackOf(drained.slice(0, 2)));
    await first.close();
    // The unacked one went back to the queue, which stayed.
    await waitUntil(async () => (await offline.depth(bob.userId, 1)) === 1, "the unacked message back");

    const second = await connectAs(bob.accessToken);
    const [left] = await second.messages(1);
    expect(left?.id).toBe(ids[2]);
    second.send(ackOf([left as Frame]));
    await waitUntil(async () => !(await queueExists(amqp, bob.queue)), "the drained queue to be removed");
    // Live delivery goes on without a queue.
    const [live] = await sendDirect(a, bob.userId, 1, "live");
    const [pushed] = await second.messages(1);
    expect(pushed?.id).toBe(live);
    expect(await queueExists(amqp, bob.queue)).toBe(false);
    await Promise.all([a.close(), second.close()]);
  }, 60_000);

  test("acks of one drain sent in separate frames, all at once, still remove the queue (10 devices)", async () => {
    // Each ack frame writes to the log on its own; the queue may go only once every one of them has
    // committed, or the user actor finds `queued` rows, keeps the queue, and nobody asks again.
    const alice = await user();
    const a = await connectAs(alice.accessToken);
    const devices = await Promise.all(Array.from({ length: 10 }, () => user()));
    const sent = await Promise.all(devices.map((d) => sendDirect(a, d.userId, 12, "separate acks")));
    await Promise.all(
      devices.map((d) => waitUntil(async () => (await offline.depth(d.userId, 1)) === 12, "twelve queued")),
    );
    const sockets = await Promise.all(devices.map((d) => connectAs(d.accessToken)));
    await Promise.all(
      sockets.map(async (socket, i) => {
        const drained = await socket.messages(12);
        expect(drained.map((m) => m.id)).toEqual(sent[i] as string[]);
        for (const m of drained) socket.send(ackOf([m]));
      }),
    );
    await Promise.all(
      devices.map((d) =>
        waitUntil(async () => !(await queueExists(amqp, d.queue)), "the drained queue to go"),
      ),
    );
    await Promise.all([a.close(), ...sockets.map((s) => s.close())]);
  }, 60_000);

  test("an empty queue left by an older version goes at the device's next connection", async () => {
    const carol = await user();
    await declareLegacyQueue(amqp, carol.queue);
    const c = await connectAs(carol.accessToken);
    await waitUntil(async () => !(await queueExists(amqp, carol.queue)), "the legacy queue to be removed");
    await c.close();
  });

  test("the sweep removes idle queues of devices that stay away and keeps those with a backlog", async () => {
    const dave = await user();
    const erin = await user();
    const alice = await user();
    await declareLegacyQueue(amqp, dave.queue);
    const a = await connectAs(alice.accessToken);
    const [waiting] = await sendDirect(a, erin.userId, 1, "for erin");
    await waitUntil(async () => (await offline.depth(erin.userId, 1)) === 1, "erin's queued message");
    const swept = await sweepIdleQueues({
      db: node.database.db,
      offline,
      queueEmptied: (d) => node.messaging.queueEmptied(d),
    });
    expect(swept.devices).toBeGreaterThanOrEqual(3);
    expect(swept.idle).toBeGreaterThanOrEqual(1);
    await waitUntil(async () => !(await queueExists(amqp, dave.queue)), "dave's idle queue to be removed");
    expect(await offline.depth(erin.userId, 1)).toBe(1);
    const e = await connectAs(erin.accessToken);
    const [got] = await e.messages(1);
    expect(got?.id).toBe(waiting);
    await Promise.all([a.close(), e.close()]);
  });

  test("a queue whose messages another drain holds unacked is kept: if-empty counts only ready ones", async () => {
    const alice = await user();
    const frank = await user();
    const a = await connectAs(alice.accessToken);
    const [id] = await sendDirect(a, frank.userId, 1, "held");
    await waitUntil(async () => (await offline.depth(frank.userId, 1)) === 1, "frank's queued message");
    const holder = await connectAs(frank.accessToken);
    await holder.messages(1); // taken from the queue, not acked: 0 ready, 1 unacked
    expect(await offline.depth(frank.userId, 1)).toBe(0);
    // As a replaced socket's successor would report it: the queue looks empty to RabbitMQ.
    await node.messaging.queueEmptied({ userId: frank.userId, deviceId: 1 });
    // The actor checks the log (the envelope is still `queued` there) and keeps the queue; a later
    // message in the same mailbox proves the report was handled.
    await node.actors.ask(userKey(frank.userId), { type: "ack", deviceId: 1, envelopes: [] });
    expect(await queueExists(amqp, frank.queue)).toBe(true);
    await holder.close();
    const again = await connectAs(frank.accessToken);
    const [back] = await again.messages(1);
    expect(back?.id).toBe(id);
    again.send(ackOf([back as Frame]));
    await waitUntil(
      async () => !(await queueExists(amqp, frank.queue)),
      "frank's drained queue to be removed",
    );
    await Promise.all([a.close(), again.close()]);
  }, 30_000);

  test(`flushes to offline devices racing removal reports in their actors lose nothing (${RACE_ROUNDS} rounds)`, async () => {
    const alice = await user();
    const targets = await Promise.all([user(), user(), user()]);
    const a = await connectAs(alice.accessToken);
    const sent = new Map<string, string[]>(targets.map((t) => [t.userId, []]));
    for (let round = 0; round < RACE_ROUNDS; round++) {
      // Every target is offline: each send is flushed to its queue, while removal reports for the
      // same queues arrive in between.
      await Promise.all(
        targets.map(async (t) => {
          const sending = sendDirect(a, t.userId, 3, `round ${round}`);
          const reports = Array.from({ length: 3 }, () =>
            node.messaging.queueEmptied({ userId: t.userId, deviceId: 1 }),
          );
          const [ids] = await Promise.all([sending, ...reports]);
          sent.get(t.userId)?.push(...(ids as string[]));
        }),
      );
    }
    for (const t of targets) {
      const ids = sent.get(t.userId) ?? [];
      await waitUntil(async () => (await offline.depth(t.userId, 1)) === ids.length, `${ids.length} queued`);
      const socket = await connectAs(t.accessToken);
      const got = await socket.messages(ids.length, 30_000);
      expect(got.map((m) => m.id)).toEqual(ids);
      socket.send(ackOf(got));
      await waitUntil(async () => !(await queueExists(amqp, t.queue)), "the drained queue to be removed");
      await socket.close();
    }
    await a.close();
  }, 180_000);

  test(`sends racing a device's drain, ack, removal and disconnect lose nothing (${RACE_ROUNDS} rounds)`, async () => {
    const alice = await user();
    const gina = await user();
    const a = await connectAs(alice.accessToken);
    const sent: string[] = [];
    const received = new Set<string>();
    const collect = (frames: Frame[], socket: TestSocket) => {
      const ids = frames.map((f) => f.id as string);
      for (const id of ids) received.add(id);
      if (ids.length > 0) socket.send(ackOf(frames));
    };
    for (let round = 0; round < RACE_ROUNDS; round++) {
      const g = await connectAs(gina.accessToken);
      // Sends land before, during and after the drain, the acks that empty the queue and the close.
      const sending = sendDirect(a, gina.userId, 4, `round ${round}`);
      await Bun.sleep(round % 5);
      collect(g.pendingMessages(), g);
      g.frames.splice(0);
      await g.close();
      sent.push(...(await sending));
    }
    // Whatever was not received live is in the queue now; take it all.
    const last = await connectAs(gina.accessToken);
    await waitUntil(
      async () => {
        collect(
          last.frames.filter((f) => f.type === "message"),
          last,
        );
        last.frames.splice(0);
        return sent.every((id) => received.has(id));
      },
      `all ${sent.length} messages`,
      60_000,
    ).catch(async (error) => {
      // Where they are, for whoever reads a failure: the queue, the log, the socket, the gateway.
      const registry = (node.gateway as unknown as { options: { registry: { values(): Iterable<any> } } })
        .options.registry;
      const state = {
        received: received.size,
        queueDepth: await offline.depth(gina.userId, 1),
        unackedInLog: (await node.log.undelivered(gina.userId)).length,
        queuedInLog: (await node.log.undelivered(gina.userId, { state: "queued" })).length,
        framesOnLastSocket: last.frames.length,
        connections: [...registry.values()]
          .filter((c) => c.principal.userId === gina.userId)
          .map((c) => ({ state: c.state, emptied: c.drain?.emptied })),
        drainChannels: offline.channelsInUse,
        warnings: node.logs.filter((l) => /"level":(40|50)/.test(l)).slice(-5),
      };
      throw new Error(`${(error as Error).message}: ${JSON.stringify(state)}`);
    });
    await waitUntil(
      async () => !(await queueExists(amqp, gina.queue)),
      "gina's queue removed after the last drain",
    );
    await Promise.all([a.close(), last.close()]);
  }, 180_000);
});

function envelope(recipientUser: string, n: number): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser,
    recipientDevice: 1,
    groupId: null,
    ts: Date.now() + n,
    type: 3,
    body: b64(`ciphertext ${n}`),
  };
}

describe("a flush after another node removed the queue (RabbitMQ)", () => {
  const prefix = runPrefix();
  let flusher: AmqpOfflineQueue;
  let remover: AmqpOfflineQueue;

  beforeAll(async () => {
    flusher = await AmqpOfflineQueue.open(AMQP_URL, { prefix, retentionDays: 1 });
    remover = await AmqpOfflineQueue.open(AMQP_URL, { prefix, retentionDays: 1 });
  });
  afterAll(async () => {
    await remover?.close();
    await flusher?.close();
  });

  // A user actor that moved between nodes flushes from a node whose record says the queue exists,
  // while the node it was on meanwhile removed it. (Removal and flush never run at once: both
  // happen in the actor's mailbox. A delete racing publishes from another connection can drop
  // messages the broker already confirmed, which is why the removal is not done elsewhere.)
  test(`a queue removed since this node declared it is declared again: nothing lost in ${RACE_ROUNDS} rounds`, async () => {
    const user = randomUUID();
    try {
      for (let round = 0; round < RACE_ROUNDS; round++) {
        const batch = Array.from({ length: 20 }, (_, i) => envelope(user, round * 100 + i));
        await flusher.flush(user, 1, batch);
        const drain = await remover.drain(user, 1);
        const got: StoredEnvelope[] = [];
        for (let next = await drain.next(100); next.length > 0; next = await drain.next(100))
          got.push(...next);
        expect(got.map((e) => e.id)).toEqual(batch.map((e) => e.id));
        await drain.ack(got);
        expect(drain.emptied).toBe(true);
        await drain.release();
        // Removed by the other node: the flusher still believes it declared the queue.
        expect(await remover.remove(user, 1)).toBe(true);
      }
    } finally {
      await remover.purge(user, 1);
    }
  }, 120_000);

  // One channel per declare or removal: past the connection's channel_max (2047) rabbitmq-client
  // throws, which 10,000 devices coming back at once reached in the offline load test.
  test("2,200 devices' queues declared, refused removal and purged all at once: every one succeeds", async () => {
    const users = Array.from({ length: 2200 }, () => randomUUID());
    try {
      await Promise.all(users.map((user) => flusher.flush(user, 1, [envelope(user, 1)])));
      // Each holds a message: if-empty refuses (406 on the operation's own channel).
      const removed = await Promise.all(users.map((user) => remover.remove(user, 1)));
      expect(removed.filter(Boolean)).toHaveLength(0);
      const purged = await Promise.all(users.map((user) => remover.purge(user, 1)));
      expect(purged.every((n) => n === 1)).toBe(true);
    } finally {
      await Promise.all(users.map((user) => remover.purge(user, 1).catch(() => 0)));
    }
  }, 120_000);

  test("a queue holding messages is not removed", async () => {
    const user = randomUUID();
    try {
      await flusher.flush(user, 1, [envelope(user, 1)]);
      expect(await remover.remove(user, 1)).toBe(false);
      expect(await remover.depth(user, 1)).toBe(1);
    } finally {
      await remover.purge(user, 1);
    }
  });
});

/**
 * Makes the drains `node` opens for `userId` end (`release`, when RabbitMQ gets back what they
 * took and did not ack) only once `until` resolves: a node slow to finish a closed socket's
 * bookkeeping, held for as long as the test needs. The broker and the queue are the real ones.
 */
function holdDrainEnds(node: TestNode, userId: string, until: () => Promise<void>): void {
  const offline = node.offline as AmqpOfflineQueue;
  const open = offline.drain.bind(offline);
  offline.drain = async (user, device) => {
    const drain = await open(user, device);
    if (user !== userId) return drain;
    const release = drain.release.bind(drain);
    drain.release = async () => {
      await until();
      return release();
    };
    return drain;
  };
}

/**
 * Calls `seen` with the drain's number (1 for the first `node` opened for `userId` from now on)
 * whenever one of those drains finds the queue empty.
 */
function watchEmptyReads(node: TestNode, userId: string, seen: (drain: number) => void): void {
  const offline = node.offline as AmqpOfflineQueue;
  const open = offline.drain.bind(offline);
  let opened = 0;
  offline.drain = async (user, device) => {
    const drain = await open(user, device);
    if (user !== userId) return drain;
    const number = ++opened;
    const next = drain.next.bind(drain);
    drain.next = async (max) => {
      const taken = await next(max);
      if (taken.length === 0) seen(number);
      return taken;
    };
    return drain;
  };
}

describe("a reconnect while the old socket's drain holds the messages (two nodes)", () => {
  let a: TestNode;
  let b: TestNode;
  let cluster: Awaited<ReturnType<typeof startTwoNodes>> | undefined;

  beforeAll(async () => {
    cluster = await startTwoNodes("drain");
    ({ a, b } = cluster);
  });
  afterAll(() => cluster?.teardown());

  // The socket on node A took the queued messages (basic.get, not acked) when the device connects
  // again on node B. B replaces A's socket, but B's drain can read the queue before A's drain ends
  // and RabbitMQ gives the messages back (no wait on B sees a socket closing on A): forced here by
  // holding the end of A's drain until B's drain found the queue empty (even rounds: B is still
  // draining or just reported drained) or B's socket is live (odd rounds). B's socket must get the
  // messages without the device connecting a third time.
  test(`messages an old socket on another node held come to the new socket (${RECONNECT_ROUNDS} rounds)`, async () => {
    const client = api(a.url);
    const alice = await registerAndLogin(client);
    const gina = await registerAndLogin(client);
    const offline = a.offline as AmqpOfflineQueue;
    let round = 0;
    let emptyReadOnB = Promise.withResolvers<void>();
    watchEmptyReads(b, gina.userId, () => emptyReadOnB.resolve());
    holdDrainEnds(a, gina.userId, async () => {
      if (round % 2 === 0) await emptyReadOnB.promise;
      else await waitUntil(async () => socketState(b, gina.userId) === "live", "B's socket live");
    });
    const sender = await TestSocket.open(a.url, alice.accessToken);
    try {
      for (; round < RECONNECT_ROUNDS; round++) {
        emptyReadOnB = Promise.withResolvers<void>();
        const ids = await sendDirect(sender, gina.userId, 5, `round ${round}`);
        await waitUntil(async () => (await offline.depth(gina.userId, 1)) === 5, "five queued messages");
        const old = await TestSocket.open(a.url, gina.accessToken);
        expect((await old.messages(5)).map((m) => m.id)).toEqual(ids);
        // Not acked: node A's drain holds all five when node B replaces the socket.
        const fresh = await TestSocket.open(b.url, gina.accessToken);
        expect((await old.whenClosed()).code).toBe(4409);
        const got = await fresh.messages(5, 10_000).catch(async (error) => {
          const state = {
            round,
            newSocket: socketState(b, gina.userId),
            queueDepth: await offline.depth(gina.userId, 1),
            queuedInLog: (await a.log.undelivered(gina.userId, { state: "queued" })).length,
          };
          throw new Error(`${(error as Error).message}: ${JSON.stringify(state)}`);
        });
        expect(got.map((m) => m.id)).toEqual(ids);
        fresh.send(ackOf(got));
        await waitUntil(
          async () => (await a.log.undelivered(gina.userId)).length === 0,
          "the acks in the log",
        );
        await fresh.close();
      }
    } finally {
      await sender.close();
      await offline.purge(gina.userId, 1).catch(() => 0);
    }
  }, 240_000);

  // The same on one node, where the new socket's drain first waits for the old socket's bookkeeping:
  // when that takes longer than the wait (5 s; here the old drain's end is held until the new drain
  // has read the queue), the new drain reads the queue before the messages are back in it.
  test("messages an old socket on the same node held come to the new socket when its drain ends past the wait", async () => {
    const client = api(a.url);
    const alice = await registerAndLogin(client);
    const hana = await registerAndLogin(client);
    const offline = a.offline as AmqpOfflineQueue;
    let emptyRead = Promise.withResolvers<void>();
    // Two drains a round, the old socket's then the new one's: only the new one's empty read counts.
    watchEmptyReads(a, hana.userId, (drain) => {
      if (drain % 2 === 0) emptyRead.resolve();
    });
    holdDrainEnds(a, hana.userId, () => emptyRead.promise);
    const sender = await TestSocket.open(a.url, alice.accessToken);
    try {
      for (let round = 0; round < 2; round++) {
        emptyRead = Promise.withResolvers<void>();
        const ids = await sendDirect(sender, hana.userId, 5, `round ${round}`);
        await waitUntil(async () => (await offline.depth(hana.userId, 1)) === 5, "five queued messages");
        const old = await TestSocket.open(a.url, hana.accessToken);
        expect((await old.messages(5)).map((m) => m.id)).toEqual(ids);
        const fresh = await TestSocket.open(a.url, hana.accessToken);
        expect((await old.whenClosed()).code).toBe(4409);
        const got = await fresh.messages(5, 15_000).catch(async (error) => {
          const state = {
            round,
            newSocket: socketState(a, hana.userId),
            queueDepth: await offline.depth(hana.userId, 1),
            queuedInLog: (await a.log.undelivered(hana.userId, { state: "queued" })).length,
          };
          throw new Error(`${(error as Error).message}: ${JSON.stringify(state)}`);
        });
        expect(got.map((m) => m.id)).toEqual(ids);
        fresh.send(ackOf(got));
        await waitUntil(
          async () => (await a.log.undelivered(hana.userId)).length === 0,
          "the acks in the log",
        );
        await fresh.close();
      }
    } finally {
      await sender.close();
      await offline.purge(hana.userId, 1).catch(() => 0);
    }
  }, 120_000);
});
