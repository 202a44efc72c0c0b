import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { directFrame } from "../../src/loadtest/load.ts";
import { type ClientEvents, ReconnectingClient } from "../../src/loadtest/reconnecting-client.ts";
import { clearboxTarget, type VirtualDevice } from "../../src/loadtest/targets.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";

/** Polls `condition` every 20 ms; throws with `what` after 20 s. */
async function until(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/** What one client heard: accepted ids and first deliveries, in order. */
function recorder() {
  const accepted: string[] = [];
  const delivered: string[] = [];
  const events: ClientEvents = {
    accepted: (id) => accepted.push(id),
    rejected: (id, code) => accepted.push(`rejected ${code} ${id}`),
    delivered: (id) => delivered.push(id),
  };
  return { accepted, delivered, events };
}

describe("load harness: reconnecting client", () => {
  let node: TestNode;
  let senderProxy: TcpProxy;
  let recipientProxy: TcpProxy;
  let sender: VirtualDevice;
  let recipient: VirtualDevice;
  const clients: ReconnectingClient[] = [];

  beforeAll(async () => {
    node = await startTestNode("pglite");
    senderProxy = await startTcpProxy(node.url);
    recipientProxy = await startTcpProxy(node.url);
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    sender = { userId: a.userId, deviceId: a.deviceId, url: senderProxy.url, token: a.accessToken };
    recipient = { userId: b.userId, deviceId: b.deviceId, url: recipientProxy.url, token: b.accessToken };
  });

  afterAll(async () => {
    for (const client of clients) client.close();
    await senderProxy?.close();
    await recipientProxy?.close();
    await node?.teardown();
  });

  test("sends cut off or made while the connection is down go out on reconnect with their ids, each accepted and delivered once, in order", async () => {
    const target = clearboxTarget([node.url], 1);
    const out = recorder();
    const into = recorder();
    const from = new ReconnectingClient(sender, target, out.events);
    const to = new ReconnectingClient(recipient, target, into.events);
    clients.push(from, to);
    await Promise.all([from.ready(), to.ready()]);

    const first = randomUUID();
    from.send(first, directFrame(first, recipient.userId, recipient.deviceId, "AAAA"));
    await until("the first delivery", () => into.delivered.length === 1);
    // Its ack stored before the cut, so a redelivery would be a duplicate the server should not make.
    for (let left = 1; left > 0; ) {
      left = (await node.log.undelivered(recipient.userId)).length;
      if (left > 0) await Bun.sleep(20);
    }

    // Both sides lose their connection; new connections are refused for a while.
    senderProxy.refuse(true);
    recipientProxy.refuse(true);
    senderProxy.cut();
    recipientProxy.cut();
    // The client has not seen the cut yet: the first send is written into the dead connection and
    // never reaches the server; the next ones wait in the outbox behind it.
    const during = [randomUUID(), randomUUID(), randomUUID()];
    for (const id of during) from.send(id, directFrame(id, recipient.userId, recipient.deviceId, "AAAA"));
    await until("both sockets to notice", () => !from.isOpen && !to.isOpen);
    expect(from.pending).toBe(3);
    senderProxy.refuse(false);
    recipientProxy.refuse(false);

    await until("the sends to be accepted", () => out.accepted.length === 4);
    await until("the deliveries", () => into.delivered.length === 4);
    expect(out.accepted).toEqual([first, ...during]);
    // One stream, accepted in order: the recipient has them in that order.
    expect(into.delivered).toEqual([first, ...during]);
    expect(from.reconnects).toBeGreaterThanOrEqual(1);
    expect(to.reconnects).toBeGreaterThanOrEqual(1);
    // The one written into the dead connection went again with its id after the reconnect.
    expect(from.resends).toBeGreaterThanOrEqual(1);
    expect(from.pending).toBe(0);
    expect(to.duplicates).toBe(0);
    from.close();
    to.close();
  });

  test("the same id sent twice is stored once: the recipient gets one copy and the sender one acceptance", async () => {
    // Users of its own: the first test's last messages may be redelivered to its recipient (acks
    // still in flight at its close), which is right but not what this test counts.
    const http = api(node.url);
    const a = await registerAndLogin(http);
    const b = await registerAndLogin(http);
    const sender = { userId: a.userId, deviceId: a.deviceId, url: node.url, token: a.accessToken };
    const recipient = { userId: b.userId, deviceId: b.deviceId, url: node.url, token: b.accessToken };
    const target = clearboxTarget([node.url], 1);
    const out = recorder();
    const into = recorder();
    const from = new ReconnectingClient(sender, target, out.events);
    const to = new ReconnectingClient(recipient, target, into.events);
    clients.push(from, to);
    await Promise.all([from.ready(), to.ready()]);
    const id = randomUUID();
    const frame = directFrame(id, recipient.userId, recipient.deviceId, "AAAA");
    from.send(id, frame);
    await until("the acceptance", () => out.accepted.length === 1);
    // A resend whose first answer was lost looks like this to the server: the same frame again.
    from.send(id, frame);
    await until("the second answer", () => out.accepted.length === 2);
    const marker = randomUUID();
    from.send(marker, directFrame(marker, recipient.userId, recipient.deviceId, "AAAA"));
    await until("the marker", () => into.delivered.includes(marker));
    expect(out.accepted).toEqual([id, id, marker]);
    expect(into.delivered).toEqual([id, marker]);
    expect(to.duplicates).toBe(0);
  });
});
