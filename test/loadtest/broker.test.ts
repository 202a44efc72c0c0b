import { expect, test } from "bun:test";
import { connect } from "amqplib";
import { brokerSnapshot } from "../../src/loadtest/broker.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";

test("the broker reading counts the run's offline queues and their messages, and reads the broker's memory", async () => {
  const prefix = runPrefix();
  const connection = await connect(AMQP_URL);
  const channel = await connection.createChannel();
  const names = [1, 2, 3].map((i) => `${prefix}.dev.user-${i}.1`);
  try {
    for (const name of names) await channel.assertQueue(name, { durable: false });
    // Another run's queue and a non-offline queue of this run are not counted.
    await channel.assertQueue(`${prefix}x.dev.other.1`, { durable: false });
    await channel.assertQueue(`${prefix}.node.n1`, { durable: false });
    channel.sendToQueue(names[0] as string, Buffer.from("a"));
    channel.sendToQueue(names[0] as string, Buffer.from("b"));
    channel.sendToQueue(names[1] as string, Buffer.from("c"));
    // Published messages become visible to list_queues once the queue processes have them.
    await channel.checkQueue(names[1] as string);
    let reading = await brokerSnapshot(prefix);
    for (let i = 0; i < 20 && reading.offlineMessages < 3; i++) {
      await Bun.sleep(200);
      reading = await brokerSnapshot(prefix);
    }
    expect(reading.offlineQueues).toBe(3);
    expect(reading.offlineMessages).toBe(3);
    expect(reading.totalBytes).toBeGreaterThan(reading.queueProcsBytes);
    expect(reading.queueProcsBytes).toBeGreaterThan(0);
  } finally {
    for (const name of [...names, `${prefix}x.dev.other.1`, `${prefix}.node.n1`])
      await channel.deleteQueue(name);
    await connection.close();
  }
}, 60_000);
