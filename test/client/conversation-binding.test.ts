import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { type ChatMessage, ClearBoxClient, Messenger } from "../../src/client/index.ts";
import type { ServerFrame } from "../../src/protocol/index.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

const password = "correct horse battery";

async function until(predicate: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

type Relay = { auth: string; upstream?: WebSocket; pending: string[] };

/**
 * A server in the middle that is not to be trusted with more than it can see: it passes HTTP and
 * the WebSocket to `target`, and may change the frames it delivers (`rewrite`), as a compromised
 * node could. It never holds a key: what it changes is only the metadata outside the encryption.
 */
function hostileServer(target: string, rewrite: (frame: ServerFrame) => ServerFrame) {
  const server: Server<Relay> = Bun.serve<Relay>({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request, srv) {
      const url = new URL(request.url);
      if (url.pathname === "/v1/ws") {
        const data = { auth: request.headers.get("authorization") ?? "", pending: [] };
        return srv.upgrade(request, { data }) ? undefined : new Response("upgrade failed", { status: 400 });
      }
      const headers = new Headers(request.headers);
      headers.delete("host");
      const hasBody = request.method !== "GET" && request.method !== "HEAD";
      const answer = await fetch(`${target}${url.pathname}${url.search}`, {
        method: request.method,
        headers,
        body: hasBody ? await request.arrayBuffer() : undefined,
      });
      const out = new Headers(answer.headers);
      out.delete("content-encoding");
      out.delete("content-length");
      return new Response(await answer.arrayBuffer(), { status: answer.status, headers: out });
    },
    websocket: {
      open(ws) {
        const upstream = new WebSocket(`${target.replace(/^http/, "ws")}/v1/ws`, {
          headers: { authorization: ws.data.auth },
        });
        ws.data.upstream = upstream;
        upstream.onopen = () => {
          for (const text of ws.data.pending.splice(0)) upstream.send(text);
        };
        upstream.onmessage = (event) =>
          ws.send(JSON.stringify(rewrite(JSON.parse(String(event.data)) as ServerFrame)));
        upstream.onclose = (event) => ws.close(event.code >= 4000 ? event.code : 1000, event.reason);
      },
      message(ws, text) {
        const upstream = ws.data.upstream;
        if (upstream?.readyState === WebSocket.OPEN) upstream.send(String(text));
        else ws.data.pending.push(String(text));
      },
      close(ws) {
        ws.data.upstream?.close();
      },
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, stop: () => server.stop(true) };
}

async function chatter(url: string, prefix: string) {
  const client = ClearBoxClient.open({ serverUrl: url, storePath: ":memory:" });
  const username = uniqueUsername(prefix);
  await client.register(username, password);
  const messenger = new Messenger(client, { minDelayMs: 50, maxDelayMs: 500 });
  const received: ChatMessage[] = [];
  const undecryptable: string[] = [];
  messenger.on("message", (m) => {
    if (!m.outgoing) received.push(m);
  });
  messenger.on("undecryptable", (u) => undecryptable.push(u.reason));
  return { client, messenger, username, received, undecryptable };
}

describe("the conversation a message belongs to is inside its encryption", () => {
  let node: TestNode;
  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(async () => {
    await node?.teardown();
  });

  test("a server that moves a message to another group, or a 1:1 message into a group, is not believed", async () => {
    // Where the server delivers Bob's messages: group `to` instead of the group or chat they were sent in.
    const moves = new Map<string, string>();
    const server = hostileServer(node.url, (frame) => {
      if (frame.type !== "message") return frame;
      const to = moves.get(frame.group ?? frame.from.user);
      return to ? { ...frame, group: to } : frame;
    });
    try {
      const a = await chatter(node.url, "alice");
      const b = await chatter(server.url, "bob");
      for (const x of [a, b]) x.messenger.start();
      await until(() => a.messenger.isOnline && b.messenger.isOnline, "both online");
      // Two groups of alice's that bob is in: "managers" and "everyone".
      const managers = await a.messenger.createGroup("managers", [b.username]);
      const everyone = await a.messenger.createGroup("everyone", [b.username]);
      for (const group of [managers, everyone]) await b.client.http.acceptInvitation(group);
      // Untouched, each arrives where it was sent.
      await a.messenger.sendGroupText(managers, "managers only");
      await a.messenger.sendGroupText(everyone, "hello everyone");
      await a.messenger.sendText(b.client.userId, "just for bob");
      await until(() => b.received.length === 3, "three messages");
      expect(b.received.map((m) => [m.conversation, m.text])).toEqual([
        [`group:${managers}`, "managers only"],
        [`group:${everyone}`, "hello everyone"],
        [a.client.userId, "just for bob"],
      ]);
      // Now the server moves what alice writes to managers, and to bob alone, into "everyone".
      moves.set(managers, everyone);
      moves.set(a.client.userId, everyone);
      await a.messenger.sendGroupText(managers, "managers only, moved");
      await a.messenger.sendText(b.client.userId, "just for bob, moved");
      // A message to "everyone" the server leaves where it is, after them.
      await a.messenger.sendGroupText(everyone, "after");
      await until(() => b.received.length + b.undecryptable.length === 6, "three more messages");
      expect(b.received.slice(3).map((m) => [m.conversation, m.text])).toEqual([
        [`group:${everyone}`, "after"],
      ]);
      expect(b.undecryptable).toEqual([
        "the message names another conversation than the one it was delivered in",
        "the message names another conversation than the one it was delivered in",
      ]);
      expect(b.messenger.history(`group:${everyone}`).map((m) => m.text)).toEqual([
        "hello everyone",
        "after",
      ]);
      for (const x of [a, b]) {
        x.messenger.stop();
        x.client.close();
      }
    } finally {
      server.stop();
    }
  });
});
