import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { ClearBoxClient, Messenger } from "../../src/client/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

async function until(predicate: () => boolean | Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

let node: TestNode;
beforeAll(async () => {
  // The default frame budget (DEVICE_RATE_LIMIT 100 a second, a burst of 200).
  node = await startTestNode("pglite");
});
afterAll(() => node?.teardown());

/**
 * A device coming back to a backlog is delivered it as fast as it reads. The Messenger acked each
 * message in a frame of its own, so past the device's frame budget its acks were refused
 * (`error rate_limited`) and never sent again: most of a backlog stayed queued, to be delivered
 * again at the next connection, and again. Its acks now go in frames of up to 1,000 messages.
 */
test("a Messenger acks a backlog larger than its frame budget", async () => {
  const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
  await client.register(uniqueUsername("backlog"), "correct horse battery");
  const userId = client.userId as string;
  const deviceId = client.deviceId as number;
  // 1,000 envelopes queued while the device was away (ciphertexts it cannot decrypt: those are
  // acked as well, as undecryptable, so they are not delivered again).
  const backlog: StoredEnvelope[] = Array.from({ length: 1000 }, (_, i) => ({
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser: userId,
    recipientDevice: deviceId,
    groupId: null,
    ts: Date.now() + i,
    type: 3,
    body: Buffer.from(`not a ciphertext ${i}`).toString("base64"),
  }));
  await node.log.append(backlog);
  await node.offline.flush(userId, deviceId, backlog);
  expect(await node.offline.depth(userId, deviceId)).toBe(1000);

  const messenger = new Messenger(client, { minDelayMs: 50, maxDelayMs: 500 });
  let handled = 0;
  messenger.on("undecryptable", () => handled++);
  messenger.start();
  try {
    await until(() => handled === 1000, "the backlog handled");
    await until(
      async () => (await node.offline.depth(userId, deviceId)) === 0,
      "every message acked",
      20_000,
    );
  } finally {
    messenger.stop();
    client.close();
  }
});

/**
 * A frame over the device's frame budget that is not a send is answered `error rate_limited`,
 * naming no frame. The Messenger sent nothing again: acks refused so were lost (their messages came
 * back at every connection) and a refused presence watch left the session without presence. Both
 * now go again after the budget refills (DEVICE_RATE_LIMIT 1: one frame a second, bursts of 2).
 */
test("acks and a presence watch refused by the frame budget are sent again", async () => {
  const tight = await startTestNode("pglite", { env: { DEVICE_RATE_LIMIT: "1" } });
  const client = ClearBoxClient.open({ serverUrl: tight.url, storePath: ":memory:" });
  const friend = ClearBoxClient.open({ serverUrl: tight.url, storePath: ":memory:" });
  try {
    await client.register(uniqueUsername("tight"), "correct horse battery");
    await friend.register(uniqueUsername("friend"), "correct horse battery");
    const userId = client.userId as string;
    const deviceId = client.deviceId as number;
    // Presence goes to related users: one group both accepted.
    const { groupId } = await client.http.createGroup({ name: "tight", members: [friend.userId as string] });
    await friend.http.acceptInvitation(groupId);
    const backlog: StoredEnvelope[] = Array.from({ length: 20 }, (_, i) => ({
      id: randomUUID(),
      senderUser: randomUUID(),
      senderDevice: 1,
      recipientUser: userId,
      recipientDevice: deviceId,
      groupId: null,
      ts: Date.now() + i,
      type: 3,
      body: Buffer.from(`not a ciphertext ${i}`).toString("base64"),
    }));
    await tight.log.append(backlog);
    await tight.offline.flush(userId, deviceId, backlog);

    const messenger = new Messenger(client, { minDelayMs: 50, maxDelayMs: 500 });
    let handled = 0;
    let friendOnline = false;
    messenger.on("undecryptable", () => {
      // As the backlog is handled, the device spends its budget (2 frames): two watches of nobody,
      // then the one naming the friend (refused), then its acks 100 ms later (refused: a tenth of
      // a frame refilled).
      if (++handled !== 1) return;
      for (let i = 0; i < 2; i++) messenger.watch([randomUUID()]);
      messenger.watch([friend.userId as string]);
    });
    messenger.on("presence", (p) => {
      if (p.userId === friend.userId && p.online) friendOnline = true;
    });
    const friendMessenger = new Messenger(friend, { minDelayMs: 50, maxDelayMs: 500 });
    friendMessenger.start();
    messenger.start();
    try {
      await until(() => handled === 20, "the backlog handled");
      // The watch went before the acks: its refusal came first, and so does its resend.
      await until(() => friendOnline, "the friend's presence", 30_000);
      await until(
        async () => (await tight.offline.depth(userId, deviceId)) === 0,
        "every message acked",
        30_000,
      );
    } finally {
      messenger.stop();
      friendMessenger.stop();
    }
  } finally {
    client.close();
    friend.close();
    await tight.teardown();
  }
}, 120_000);
