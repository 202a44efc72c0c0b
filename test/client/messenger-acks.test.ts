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
