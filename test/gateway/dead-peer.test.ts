import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import type { Socket } from "node:net";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { openRawWebSocket } from "../support/raw-ws.ts";
import { receiveAcking, TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/**
 * A WebSocket client that completes the upgrade and then stops reading: the kernel keeps taking
 * what the server writes (until its buffer is full) but nothing is read, so no ping is ever
 * answered. What a peer behind a half-open TCP connection looks like to the server.
 */
async function stalledSocket(baseUrl: string, token: string): Promise<Socket> {
  return (await openRawWebSocket(baseUrl, token)).socket;
}

describe.each(STACKS)("dead peers on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, prefix), WS_PING_INTERVAL_MS: "300", DEVICE_RATE_LIMIT: "100000" },
    });
  });
  afterAll(() => node?.teardown());

  test("a peer that stopped reading is closed while messages keep flowing to it, and gets them all on its next connection, once each, in order", async () => {
    const client = api(node.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const aliceSocket = await TestSocket.open(node.url, alice.accessToken);
    const stalled = await stalledSocket(node.url, bob.accessToken);
    const until = Date.now() + 10_000;
    while (node.gateway.connections < 2 && Date.now() < until) await Bun.sleep(20);
    expect(node.gateway.connections).toBe(2);

    // A steady stream to the stalled peer, so its socket is never idle, until the node closes it.
    const accepted: string[] = [];
    let sentAfterClose = 0;
    for (let i = 0; sentAfterClose < 20; i++) {
      if (i > 5000) throw new Error("the stalled socket was never closed");
      const id = randomUUID();
      aliceSocket.send({
        type: "send",
        id,
        to: { user: bob.userId },
        messages: [{ deviceId: 1, type: 3, body: b64(`m${i}`) }],
      });
      const reply = await aliceSocket.reply(id, 30_000);
      expect(reply.type).toBe("accepted");
      accepted.push(id);
      if (node.gateway.deadPeers > 0) sentAfterClose++;
      await Bun.sleep(10);
    }
    // Only the stalled socket was taken for dead: Alice's client answers pings by itself.
    expect(node.gateway.deadPeers).toBe(1);
    expect(aliceSocket.closed).toBeUndefined();
    expect(node.gateway.connections).toBe(1);
    stalled.destroy();

    // Bob's next connection gets everything the dead socket was written and what came after it.
    const bobSocket = await TestSocket.open(node.url, bob.accessToken);
    expect(await receiveAcking(bobSocket, accepted.length)).toEqual(accepted);
    await Promise.all([aliceSocket.close(), bobSocket.close()]);
  });
});
