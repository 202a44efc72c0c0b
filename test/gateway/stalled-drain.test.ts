import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { openRawWebSocket, PONG } from "../support/raw-ws.ts";
import { queueBacklog, receiveAcking, TestSocket } from "../support/ws.ts";

/**
 * A client that completes the upgrade, then never reads another byte but sends a pong every
 * `everyMs` (a heartbeat RFC 6455 allows unasked): to the ping schedule it looks alive, while
 * nothing the server writes ever leaves its buffer. Stops when `stop` is called.
 */
async function pongingNonReader(baseUrl: string, token: string, everyMs: number) {
  const { socket } = await openRawWebSocket(baseUrl, token);
  const beat = setInterval(() => {
    if (!socket.destroyed) socket.write(PONG);
  }, everyMs);
  return {
    stop() {
      clearInterval(beat);
      socket.destroy();
    },
  };
}

describe.each(STACKS)("a device whose socket never takes its offline backlog, %s stack", (stack) => {
  let node: TestNode;

  beforeAll(async () => {
    const backend: Backend = stack === "embedded" ? "pglite" : "postgres";
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, runPrefix()), WS_PING_INTERVAL_MS: "300", DEVICE_RATE_LIMIT: "100000" },
    });
  });
  afterAll(() => node?.teardown());

  test("is closed although it sends pongs, and its next connection gets the whole backlog, once each, in order", async () => {
    const client = api(node.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const sender = await TestSocket.open(node.url, alice.accessToken);
    // 40 messages of 240 KiB (base64): 9.4 MiB, more than the kernel buffers of a loopback
    // connection take, so the paced drain waits for room in the socket's buffer.
    const body = randomBytes(180 * 1024).toString("base64");
    const accepted = await queueBacklog(sender, bob, 40, body);
    const registry = (node.gateway as unknown as { options: { registry: SocketRegistry } }).options.registry;
    const stalled = await pongingNonReader(node.url, bob.accessToken, 50);
    try {
      // Before: the drain waited for a `drain` event that never came, holding its batch (in the
      // node's memory and unacked at the broker) for as long as the pongs kept coming.
      let open = true;
      for (let i = 0; i < 150 && open; i++) {
        await Bun.sleep(100);
        open = registry.get(bob.userId, bob.deviceId) !== undefined;
      }
      expect(open).toBe(false);
    } finally {
      stalled.stop();
    }
    const bobSocket = await TestSocket.open(node.url, bob.accessToken);
    expect(await receiveAcking(bobSocket, accepted.length)).toEqual(accepted);
    await Promise.all([sender.close(), bobSocket.close()]);
  }, 120_000);
});
