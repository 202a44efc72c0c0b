import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { type ChatMessage, ClearBoxClient, Messenger } from "../../src/client/index.ts";
import { BUSY_RETRIES, RATE_LIMIT_RETRIES } from "../../src/client/socket.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

const password = "correct horse battery";

/**
 * The Messenger sent a message answered `busy` (or `rate_limited` with a short wait) again with no
 * limit for as long as its socket stayed open, where ClearBoxSocket stops at BUSY_RETRIES and
 * RATE_LIMIT_RETRIES: a hostile server answering nothing else kept the client resending one
 * message for ever. Here HTTP goes to a real node (accounts, keys), and the WebSocket to a real
 * Bun server that answers every `send` with the same refusal; its frames are counted.
 */
describe("Messenger against a server that only ever refuses sends", () => {
  let node: TestNode;
  let hostile: Server<undefined>;
  let refusal: { code: "busy" | "rate_limited"; retryAfterMs: number } = { code: "busy", retryAfterMs: 0 };
  const sends = new Map<string, number>();

  beforeAll(async () => {
    node = await startTestNode("pglite");
    hostile = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(request, server) {
        const url = new URL(request.url);
        if (url.pathname === "/v1/ws") {
          return server.upgrade(request) ? undefined : new Response("upgrade failed", { status: 400 });
        }
        const headers = new Headers(request.headers);
        headers.delete("host");
        return fetch(new URL(`${url.pathname}${url.search}`, node.url), {
          method: request.method,
          headers,
          body:
            request.method === "GET" || request.method === "HEAD" ? undefined : await request.arrayBuffer(),
        });
      },
      websocket: {
        message(ws, data) {
          const frame = JSON.parse(String(data)) as { type: string; id?: string };
          if (frame.type !== "send" || !frame.id) return;
          sends.set(frame.id, (sends.get(frame.id) ?? 0) + 1);
          ws.send(JSON.stringify({ type: "rejected", id: frame.id, ...refusal }));
        },
      },
    });
  });
  afterAll(async () => {
    hostile?.stop(true);
    await node?.teardown();
  });

  /** Sends one message from a Messenger connected to the hostile server; resolves with its final state. */
  async function sendOnce(): Promise<{ id: string; state: ChatMessage["state"] }> {
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const alice = ClearBoxClient.open({
      serverUrl: `http://127.0.0.1:${hostile.port}`,
      storePath: ":memory:",
    });
    await bob.register(uniqueUsername("bob"), password);
    await alice.register(uniqueUsername("alice"), password);
    const messenger = new Messenger(alice, { minDelayMs: 50, maxDelayMs: 500 });
    try {
      const settled = new Promise<ChatMessage>((resolve) =>
        messenger.on("message", (m) => {
          if (m.outgoing && m.state !== "queued") resolve(m);
        }),
      );
      messenger.start();
      const queued = await messenger.sendText(bob.userId, "are you there?");
      let done: ChatMessage | undefined;
      void settled.then((m) => {
        done = m;
      });
      // Without a cap it never settles: stop watching once it was sent far more often than any cap.
      while (!done && (sends.get(queued.id) ?? 0) <= 2 * BUSY_RETRIES) await Bun.sleep(20);
      return { id: queued.id, state: done?.state ?? "queued" };
    } finally {
      messenger.stop();
      alice.close();
      bob.close();
    }
  }

  test("a message answered busy every time is sent BUSY_RETRIES times, then fails", async () => {
    refusal = { code: "busy", retryAfterMs: 0 };
    const { id, state } = await sendOnce();
    expect(state).toBe("failed");
    expect(sends.get(id)).toBe(BUSY_RETRIES);
  });

  test("a message answered rate_limited (a short wait) every time is sent again RATE_LIMIT_RETRIES times, then fails", async () => {
    refusal = { code: "rate_limited", retryAfterMs: 30 };
    const { id, state } = await sendOnce();
    expect(state).toBe("failed");
    expect(sends.get(id)).toBe(1 + RATE_LIMIT_RETRIES);
  });
});
