import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes, randomUUID } from "node:crypto";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { frameReader, maskedText, openRawWebSocket, PONG } from "../support/raw-ws.ts";
import { queueBacklog, TestSocket } from "../support/ws.ts";

/**
 * A client on a slow link (at most 256 KiB from the kernel per 50 ms) that sends `frame` right
 * after the upgrade, then reads its backlog of `expected` messages. Returns how many message frames
 * came before the answer to its send.
 */
async function slowSender(baseUrl: string, token: string, frame: unknown, expected: number) {
  // The upgrade's answer first: the send goes once the socket is a WebSocket.
  const { socket, early } = await openRawWebSocket(baseUrl, token);
  const read = frameReader();
  socket.write(maskedText(JSON.stringify(frame)));
  let messages = 0;
  let answeredAfter: number | undefined;
  let answer: string | undefined;
  const deadline = Date.now() + 60_000;
  const take = (chunk: Buffer) => {
    for (const f of read(chunk)) {
      if (f.opcode === 9) socket.write(PONG);
      if (f.opcode !== 1) continue;
      const text = f.payload.toString("utf8");
      if (text.startsWith('{"type":"message"')) messages++;
      else if (answer === undefined && text.includes((frame as { id: string }).id)) {
        answer = (JSON.parse(text) as { type: string }).type;
        answeredAfter = messages;
      }
    }
  };
  take(early);
  while ((messages < expected || answer === undefined) && Date.now() < deadline && !socket.destroyed) {
    let taken = 0;
    while (taken < 256 * 1024) {
      const chunk: Buffer | null = socket.read();
      if (chunk === null) break;
      taken += chunk.length;
      take(chunk);
    }
    await Bun.sleep(50);
  }
  socket.destroy();
  return { messages, answer, answeredAfter };
}

describe.each(STACKS)(
  "a device sending while its offline backlog drains on a slow link, %s stack",
  (stack) => {
    let node: TestNode;

    beforeAll(async () => {
      const backend: Backend = stack === "embedded" ? "pglite" : "postgres";
      node = await startTestNode(backend, {
        env: { ...stackEnv(stack, runPrefix()), DEVICE_RATE_LIMIT: "100000" },
      });
    });
    afterAll(() => node?.teardown());

    test("has its send accepted while the drain still runs, not only after the whole backlog", async () => {
      const client = api(node.url);
      const alice = await registerAndLogin(client);
      const bob = await registerAndLogin(client);
      const sender = await TestSocket.open(node.url, alice.accessToken);
      // 40 messages of 240 KiB (base64): 9.4 MiB queued for Bob's device, paced to his reading.
      const body = randomBytes(180 * 1024).toString("base64");
      const count = 40;
      await queueBacklog(sender, bob, count, body);
      const id = randomUUID();
      const reply = {
        type: "send",
        id,
        to: { user: alice.userId },
        messages: [{ deviceId: alice.deviceId, type: 3, body: Buffer.from("hi").toString("base64") }],
      };
      const got = await slowSender(node.url, bob.accessToken, reply, count);
      expect(got.messages).toBe(count);
      expect(got.answer).toBe("accepted");
      // Before: a device's sends wait on its socket's chain, which the paced drain held until the
      // whole backlog was written: the answer came after all 40 messages (on a slower link the drain
      // outlasts SEND_DEADLINE_MS, 10 s, and every send is refused "not accepted in time").
      expect(got.answeredAfter).toBeLessThan(count);
      await sender.close();
    }, 120_000);
  },
);
