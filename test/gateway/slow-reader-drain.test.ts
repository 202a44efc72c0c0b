import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { connect, type Socket } from "node:net";
import { DRAIN_HIGH_WATER_BYTES } from "../../src/gateway/connection.ts";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * Server → client WebSocket frames (RFC 6455 §5.2, unmasked) out of a byte stream: each complete
 * frame's opcode and payload, the rest kept for the next chunk.
 */
function frameReader() {
  let pending = Buffer.alloc(0);
  return (chunk: Buffer): { opcode: number; payload: Buffer }[] => {
    pending = Buffer.concat([pending, chunk]);
    const frames: { opcode: number; payload: Buffer }[] = [];
    for (;;) {
      if (pending.length < 2) break;
      const opcode = (pending[0] as number) & 0x0f;
      let length = (pending[1] as number) & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (pending.length < 4) break;
        length = pending.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (pending.length < 10) break;
        length = Number(pending.readBigUInt64BE(2));
        offset = 10;
      }
      if (pending.length < offset + length) break;
      frames.push({ opcode, payload: pending.subarray(offset, offset + length) });
      pending = pending.subarray(offset + length);
    }
    return frames;
  };
}

/**
 * A client on a slow link: upgrades, then reads at most `chunkBytes` from the kernel per turn of
 * `pauseMs`. Counts the `message` frames it got until it has `expected` or the server closes it.
 */
async function slowReader(baseUrl: string, token: string, expected: number) {
  const { hostname, port } = new URL(baseUrl);
  const socket: Socket = connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.pause();
  socket.write(
    [
      "GET /v1/ws HTTP/1.1",
      `Host: ${hostname}:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
      "Sec-WebSocket-Version: 13",
      `Authorization: Bearer ${token}`,
      "",
      "",
    ].join("\r\n"),
  );
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
  let head = "";
  let messages = 0;
  const chunkBytes = 256 * 1024;
  const pauseMs = 50;
  while (messages < expected && !closedByServer) {
    let taken = 0;
    while (taken < chunkBytes) {
      const chunk: Buffer | null = socket.read();
      if (chunk === null) break;
      taken += chunk.length;
      let rest = chunk;
      if (!head.includes("\r\n\r\n")) {
        head += chunk.toString("latin1");
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) continue;
        if (!head.startsWith("HTTP/1.1 101")) throw new Error(`upgrade refused: ${head.split("\r\n")[0]}`);
        rest = chunk.subarray(chunk.length - (head.length - end - 4));
      }
      for (const frame of read(rest)) {
        if (frame.opcode === 1 && frame.payload.toString("utf8", 0, 17) === '{"type":"message"') messages++;
        // Pings answered (masked pong, empty payload), as every WebSocket library does when it reads.
        if (frame.opcode === 9) socket.write(Buffer.from([0x8a, 0x80, 0, 0, 0, 0]));
      }
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
    for (let i = 0; i < count; i++) {
      const id = randomUUID();
      sender.send({
        type: "send",
        id,
        to: { user: bob.userId },
        messages: [{ deviceId: bob.deviceId, type: 2, body }],
      });
      expect((await sender.reply(id)).type).toBe("accepted");
    }
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
