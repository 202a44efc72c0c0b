import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { DRAIN_HIGH_WATER_BYTES } from "../../src/gateway/connection.ts";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { frameReader, openRawWebSocket, PONG } from "../support/raw-ws.ts";
import { queueBacklog, TestSocket } from "../support/ws.ts";

/**
 * A client on a slow link: upgrades, then reads at most `chunkBytes` from the kernel per turn of
 * `pauseMs`. Counts the `message` frames it got until it has `expected` or the server closes it.
 */
async function slowReader(baseUrl: string, token: string, expected: number) {
  const { socket, early } = await openRawWebSocket(baseUrl, token);
  let closedByServer = false;
  socket.on("end", () => {
    closedByServer = true;
  });
  socket.on("close", () => {
    closedByServer = true;
  });
  socket.on("error", () => {
    closedByServer = true;
  });
  const read = frameReader();
  let messages = 0;
  const take = (chunk: Buffer) => {
    for (const frame of read(chunk)) {
      if (frame.opcode === 1 && frame.payload.toString("utf8", 0, 17) === '{"type":"message"') messages++;
      // Pings answered (masked pong, empty payload), as every WebSocket library does when it reads.
      if (frame.opcode === 9) socket.write(PONG);
    }
  };
  take(early);
  const chunkBytes = 256 * 1024;
  const pauseMs = 50;
  while (messages < expected && !closedByServer) {
    let taken = 0;
    while (taken < chunkBytes) {
      const chunk: Buffer | null = socket.read();
      if (chunk === null) break;
      taken += chunk.length;
      take(chunk);
    }
    await Bun.sleep(pauseMs);
  }
  socket.destroy();
  return { messages, closedByServer };
}

describe.each(STACKS)("a device with a large offline backlog on a slow link, %s stack", (stack) => {
  let node: TestNode;

  beforeAll(async () => {
    const backend: Backend = stack === "embedded" ? "pglite" : "postgres";
    node = await startTestNode(backend, {
      env: { ...stackEnv(stack, runPrefix()), DEVICE_RATE_LIMIT: "100000" },
    });
  });
  afterAll(() => node?.teardown());

  test("gets its whole backlog on one connection, the server's send buffer never holding more than about twice the drain's high-water mark", async () => {
    const client = api(node.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const sender = await TestSocket.open(node.url, alice.accessToken);
    // 40 messages of 240 KiB (base64): 9.4 MiB queued for Bob's device, more than the gateway's
    // 4 MiB backpressure limit and what the kernel buffers of a loopback connection take.
    const body = randomBytes(180 * 1024).toString("base64");
    const count = 40;
    await queueBacklog(sender, bob, count, body);
    const registry = (node.gateway as unknown as { options: { registry: SocketRegistry } }).options.registry;
    let mostBuffered = 0;
    const sampler = setInterval(() => {
      const conn = registry.get(bob.userId, bob.deviceId);
      if (conn) mostBuffered = Math.max(mostBuffered, conn.ws.getBufferedAmount());
    }, 5);
    try {
      const got = await slowReader(node.url, bob.accessToken, count);
      // Before: the drain wrote its 256 envelopes at once and the socket was closed past the
      // backpressure limit after about 4 MiB (16 of the 40), on every reconnect.
      expect(got).toEqual({ messages: count, closedByServer: false });
    } finally {
      clearInterval(sampler);
    }
    expect(mostBuffered).toBeLessThanOrEqual(2 * DRAIN_HIGH_WATER_BYTES + body.length * 2);
  }, 120_000);
});
