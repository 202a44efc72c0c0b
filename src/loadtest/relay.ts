/**
 * The ceiling: the smallest Bun WebSocket relay that speaks enough of docs/PROTOCOL.md for the harness.
 * No auth, no persistence, no actors: a `send` is parsed, forwarded as a `message` frame to the
 * recipient's socket (or each group member's) and answered `accepted`. Run as its own process
 * (`bun run src/loadtest/relay.ts`, `PORT`, default 0) so it is measured like a ClearBox node.
 */
import type { ServerWebSocket } from "bun";

interface RelaySocket {
  user: string;
}

interface SendFrame {
  type: string;
  id: string;
  to: { user?: string; group?: string };
  messages?: { type: number; body: string }[];
  message?: { type: number; body: string };
}

const sockets = new Map<string, ServerWebSocket<RelaySocket>>();
const groups = new Map<string, string[]>();

const server = Bun.serve<RelaySocket>({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  async fetch(request, srv) {
    const url = new URL(request.url);
    if (url.pathname === "/groups" && request.method === "POST") {
      const { groupId, members } = (await request.json()) as { groupId: string; members: string[] };
      groups.set(groupId, members);
      return new Response(null, { status: 204 });
    }
    if (url.pathname === "/v1/ws") {
      const user = url.searchParams.get("user");
      if (user && srv.upgrade(request, { data: { user } })) return undefined;
      return new Response("expected ?user=<id> and an upgrade", { status: 400 });
    }
    if (url.pathname === "/healthz") return new Response("ok");
    return new Response("not found", { status: 404 });
  },
  websocket: {
    maxPayloadLength: 1 << 20,
    open(ws) {
      sockets.set(ws.data.user, ws);
    },
    message(ws, text) {
      const frame = JSON.parse(String(text)) as SendFrame;
      if (frame.type !== "send") return;
      const ts = Date.now();
      const from = { user: ws.data.user, device: 1 };
      if (frame.to.user !== undefined) {
        const envelope = frame.messages?.[0];
        const out = JSON.stringify({ type: "message", id: frame.id, from, ts, envelope });
        sockets.get(frame.to.user)?.send(out);
      } else if (frame.to.group !== undefined) {
        const out = JSON.stringify({
          type: "message",
          id: frame.id,
          from,
          group: frame.to.group,
          ts,
          envelope: frame.message,
        });
        for (const member of groups.get(frame.to.group) ?? []) {
          if (member !== ws.data.user) sockets.get(member)?.send(out);
        }
      }
      ws.send(JSON.stringify({ type: "accepted", id: frame.id, ts }));
    },
    close(ws) {
      if (sockets.get(ws.data.user) === ws) sockets.delete(ws.data.user);
    },
  },
});

console.log(JSON.stringify({ msg: "relay started", url: `http://127.0.0.1:${server.port}` }));
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
