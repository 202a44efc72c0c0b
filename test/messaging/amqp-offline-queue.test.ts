import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { Connection } from "rabbitmq-client";
import { AmqpOfflineQueue } from "../../src/messaging/amqp-offline-queue.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";

/** More than RabbitMQ's default channel_max (2047) on one connection. */
const DEVICES = 2100;

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
    body: Buffer.from(`ciphertext ${n}`).toString("base64"),
  };
}

describe("RabbitMQ offline queue drains", () => {
  let queue: AmqpOfflineQueue;
  const users = Array.from({ length: DEVICES }, () => randomUUID());

  beforeAll(async () => {
    queue = await AmqpOfflineQueue.open(AMQP_URL, { prefix: runPrefix(), retentionDays: 1 });
  });

  // 2,100 deletes pipelined on one channel of their own: purge() opens a channel per queue, which
  // under a loaded machine outlasted the hook's timeout and left the run's queues on the broker.
  afterAll(async () => {
    await queue.close();
    // A broker slow to take one more connection (a loaded machine) is waited for, not failed on:
    // the client retries by itself and reports each failed try as an 'error' event, which with no
    // listener was thrown as an uncaught exception (a CI run's "1 error", between tests). A
    // cleanup that still cannot get a channel throws below, from acquire().
    const rabbit = new Connection({
      url: AMQP_URL,
      retryLow: 100,
      retryHigh: 1000,
      connectionTimeout: 30_000,
      acquireTimeout: 120_000,
    });
    rabbit.on("error", () => {});
    try {
      const channel = await rabbit.acquire();
      await Promise.all(users.map((u) => channel.queueDelete({ queue: queue.queueName(u, 1) })));
      await channel.close();
    } finally {
      await rabbit.close();
    }
  }, 180_000);

  test(`${DEVICES} devices reconnecting at once to empty queues give their channels back at once`, async () => {
    const drains = await Promise.all(users.map((u) => queue.drain(u, 1)));
    const batches = await Promise.all(drains.map((d) => d.next(100)));
    expect(batches.every((b) => b.length === 0)).toBe(true);
    // Each drain that found its queue empty gave its channel back without waiting for release().
    expect(queue.channelsInUse).toBe(0);
    expect(await queue.depth(users[0] as string, 1)).toBe(0);
    await Promise.all(drains.map((d) => d.release()));
  });

  test(`${DEVICES} devices holding unacked backlogs at once spill onto more connections; acks remove, release returns`, async () => {
    for (let i = 0; i < users.length; i += 300) {
      await Promise.all(
        users.slice(i, i + 300).map((u) => queue.flush(u, 1, [envelope(u, 1), envelope(u, 2)])),
      );
    }
    const drains = await Promise.all(users.map((u) => queue.drain(u, 1)));
    const batches = await Promise.all(drains.map((d) => d.next(100)));
    expect(batches.map((b) => b.length)).toEqual(users.map(() => 2));
    expect(queue.channelsInUse).toBe(DEVICES);
    expect(queue.connectionCount).toBeGreaterThan(1);
    // Every device but the first acks only its first message, then goes away: the second goes back.
    const [first, ...rest] = drains;
    await first?.ack(batches[0] ?? []);
    await Promise.all(rest.map((d, i) => d.ack([(batches[i + 1] ?? [])[0] as StoredEnvelope])));
    await Promise.all(drains.map((d) => d.release()));
    expect(queue.channelsInUse).toBe(0);
    expect(await queue.depth(users[0] as string, 1)).toBe(0);
    const again = await queue.drain(users[1] as string, 1);
    const left = await again.next(100);
    expect(left.map((e) => e.id)).toEqual([(batches[1] ?? [])[1]?.id as string]);
    await again.release();
  }, 60_000);
});

describe("RabbitMQ offline queue dropFrom", () => {
  test("a pass that fails part-way leaves no re-publish unobserved (its rejection reaches the caller)", async () => {
    const queue = await AmqpOfflineQueue.open(AMQP_URL, { prefix: runPrefix(), retentionDays: 1 });
    const rabbit = new Connection({ url: AMQP_URL, retryLow: 100, retryHigh: 1000, acquireTimeout: 60_000 });
    // Retried connect failures come as 'error' events, thrown if nobody listens (see afterAll above).
    rabbit.on("error", () => {});
    const users: string[] = [];
    const errors: unknown[] = [];
    const record = (reason: unknown) => errors.push(reason);
    process.on("unhandledRejection", record);
    try {
      // Another sender's messages are kept (re-published behind) before the pass reaches one it
      // cannot read; the pass fails there and closes its channel, rejecting the re-publishes whose
      // confirms had not come yet. Whether any had not is up to the broker: five rounds.
      for (let round = 0; round < 5; round++) {
        const user = randomUUID();
        users.push(user);
        await queue.flush(user, 1, [envelope(user, 1), envelope(user, 2), envelope(user, 3)]);
        const channel = await rabbit.acquire();
        await channel.basicPublish(
          { routingKey: queue.queueName(user, 1), durable: true },
          Buffer.from("not json"),
        );
        await channel.close();
        const failed = await queue.dropFrom(user, 1, randomUUID()).then(
          () => undefined,
          (error: unknown) => error,
        );
        expect(failed).toBeInstanceOf(SyntaxError);
      }
      // Rejections of the closed channels' unconfirmed publishes surface within a few turns.
      for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(errors).toEqual([]);
    } finally {
      process.off("unhandledRejection", record);
      for (const user of users) await queue.purge(user, 1).catch(() => 0);
      await queue.close();
      await rabbit.close();
    }
  });
});

describe("RabbitMQ offline queue close", () => {
  test("a drain connection still connecting when the queue closes is closed too, not kept", async () => {
    const queue = await AmqpOfflineQueue.open(AMQP_URL, { prefix: runPrefix(), retentionDays: 1 });
    // The first drain opens the first drain connection; the queue closes while it connects.
    const drain = await queue.drain(randomUUID(), 1);
    const reading = drain.next(10).then(
      () => "read",
      (error: unknown) => (error as Error).message,
    );
    await queue.close();
    expect(await reading).toBe("offline queue is closed");
    expect(queue.connectionCount).toBe(0);
  });
});
