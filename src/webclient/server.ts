import { randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import { join, normalize, resolve } from "node:path";
import type { ServerWebSocket } from "bun";
import {
  type ChatMessage,
  ClearBoxApiError,
  ClearBoxClient,
  Messenger,
  readKnownGroups,
  StoreInUseError,
  writeKnownGroups,
} from "../client/index.ts";
import { checkReceipt } from "../protocol/erasure-receipt.ts";

/** Largest request body the page sends (a message, a password): 64 KiB. */
const MAX_BODY_BYTES = 64 * 1024;
/** A message's text as the page may send it. */
const MAX_TEXT = 16_000;

export interface WebClientOptions {
  /** The account's store file (created only once a sign-up or sign-in succeeded). */
  storePath: string;
  /** The ClearBox node; default: the one saved in the store, else http://127.0.0.1:8080. */
  serverUrl?: string;
  /** Directory of the built page (Vite's output). */
  assetsDir: string;
  /** Loopback port to listen on; 0 picks a free one. */
  port?: number;
  ca?: string;
}

export interface WebClient {
  /** The address to open, with the secret: http://127.0.0.1:<port>/?secret=<secret>. */
  url: string;
  port: number;
  stop(): Promise<void>;
}

type Json = Record<string, unknown>;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The local client process of the browser sample client (as Signal Desktop keeps libsignal in its
 * main process): it holds the account's store and does every cryptographic step with the SDK; the
 * page only shows and asks, over HTTP and one WebSocket on loopback.
 *
 * Who may talk to it: it listens on 127.0.0.1 only, every `/api` call must carry the random secret
 * of the printed URL (header `x-clearbox-secret`, or `?secret=` for the WebSocket, as Jupyter's
 * token), the Host header must name the loopback address (no DNS rebinding), and the WebSocket's
 * Origin must be this page. Static files (the built page) need no secret.
 */
export async function startWebClient(options: WebClientOptions): Promise<WebClient> {
  const secret = randomBytes(24).toString("base64url");
  const sockets = new Set<ServerWebSocket<unknown>>();
  const assetsDir = resolve(options.assetsDir);
  let client: ClearBoxClient | undefined = existsSync(options.storePath)
    ? ClearBoxClient.open({ storePath: options.storePath, serverUrl: options.serverUrl, ca: options.ca })
    : undefined;
  if (client) {
    const owner = Messenger.socketOwner(client);
    if (owner !== undefined) {
      client.close();
      throw new StoreInUseError(owner);
    }
  }
  let messenger: Messenger | undefined;
  let status: "online" | "offline" | "stopped" | "signed-out" = "signed-out";
  const presence = new Map<string, { online: boolean; lastSeen: number }>();

  const broadcast = (event: Json) => {
    const text = JSON.stringify(event);
    for (const ws of sockets) ws.send(text);
  };

  const unread = (): Record<string, number> => client?.store.get<Record<string, number>>("web.unread") ?? {};
  const setUnread = (value: Record<string, number>) => client?.store.set("web.unread", value);
  // One list with the CLI's chat (readKnownGroups), which may use this store between two runs.
  const groupNames = (): Record<string, string> => (client ? readKnownGroups(client.store) : {});
  const rememberGroup = (groupId: string, name: string) => {
    if (client) writeKnownGroups(client.store, { ...groupNames(), [groupId]: name });
  };

  const startMessenger = () => {
    if (!client || messenger) return;
    const m = new Messenger(client);
    messenger = m;
    m.on("message", async (message: ChatMessage) => {
      if (!message.outgoing) {
        const counts = unread();
        counts[message.conversation] = (counts[message.conversation] ?? 0) + 1;
        setUnread(counts);
        if (message.group && !groupNames()[message.group]) {
          try {
            rememberGroup(message.group, (await client?.http.group(message.group))?.name ?? "group");
          } catch {
            // Named once the server answers.
          }
        }
      }
      broadcast({ type: "message", message });
    });
    m.on("presence", (p) => {
      presence.set(p.userId, { online: p.online, lastSeen: p.lastSeen });
      broadcast({ type: "presence", ...p });
    });
    m.on("identityChanged", (change) => broadcast({ type: "identityChanged", ...change }));
    m.on("status", (s, detail) => {
      status = s;
      broadcast({ type: "status", status: s, ...detail });
    });
    m.start();
  };
  if (client?.persisted) {
    try {
      void client.userId;
      startMessenger();
    } catch {
      // A store without a finished sign-in.
    }
  }

  const account = () => {
    if (!client) return null;
    try {
      return {
        username: client.username,
        userId: client.userId,
        deviceId: client.deviceId,
        serverUrl: client.serverUrl,
      };
    } catch {
      return null;
    }
  };
  const signedIn = (): { client: ClearBoxClient; messenger: Messenger } => {
    if (!client || !messenger || !account()) throw new HttpError(401, "sign in first");
    return { client, messenger };
  };

  const contactList = (c: ClearBoxClient) => {
    const counts = unread();
    return c
      .contacts()
      .filter((contact) => contact.userId !== c.userId)
      .map((contact) => {
        return {
          ...contact,
          online: presence.get(contact.userId)?.online ?? false,
          unread: counts[contact.userId] ?? 0,
          ...c.trustOf(contact.userId),
        };
      });
  };

  const groupList = () => {
    const counts = unread();
    return Object.entries(groupNames()).map(([groupId, name]) => ({
      groupId,
      name,
      unread: counts[`group:${groupId}`] ?? 0,
    }));
  };

  const signIn = async (body: Json, register: boolean) => {
    const username = text(body.username, "username", 64).toLowerCase();
    const password = text(body.password, "password", 256);
    const serverUrl = typeof body.serverUrl === "string" && body.serverUrl ? body.serverUrl : undefined;
    if (account()) throw new HttpError(409, "already signed in");
    client?.close();
    client = ClearBoxClient.open({
      storePath: options.storePath,
      serverUrl: serverUrl ?? options.serverUrl ?? "http://127.0.0.1:8080",
      ca: options.ca,
    });
    try {
      if (register) await client.register(username, password, "browser");
      else await client.login(username, password, "browser");
    } catch (error) {
      client.close();
      client = undefined;
      throw error;
    }
    startMessenger();
    return { account: account() };
  };

  const routes: Record<string, (body: Json, params: string[], url: URL) => Promise<unknown> | unknown> = {
    "GET /api/state": () => ({ account: account(), status }),
    "POST /api/register": (body) => signIn(body, true),
    "POST /api/login": (body) => signIn(body, false),
    "GET /api/contacts": () => {
      const { client: c } = signedIn();
      return { contacts: contactList(c), groups: groupList() };
    },
    "POST /api/contacts": async (body) => {
      const { client: c, messenger: m } = signedIn();
      const user = await c.findUser(text(body.username, "username", 64).toLowerCase());
      m.watch([user.userId]);
      return { contact: user };
    },
    "GET /api/conversations/:id": (_body, [id]) => {
      const { messenger: m } = signedIn();
      return { messages: m.history(conversationId(id)) };
    },
    "POST /api/conversations/:id": async (body, [id]) => {
      const { messenger: m } = signedIn();
      const conversation = conversationId(id);
      const message = text(body.text, "text", MAX_TEXT);
      const queued = conversation.startsWith("group:")
        ? await m.sendGroupText(conversation.slice(6), message)
        : await m.sendText(conversation, message);
      return { message: queued };
    },
    "POST /api/conversations/:id/read": (_body, [id]) => {
      signedIn();
      const counts = unread();
      delete counts[conversationId(id)];
      setUnread(counts);
      return {};
    },
    "POST /api/groups": async (body) => {
      const { messenger: m } = signedIn();
      const name = text(body.name, "name", 128);
      const members = Array.isArray(body.members)
        ? body.members.map((x) => text(x, "members", 64).toLowerCase())
        : [];
      const groupId = await m.createGroup(name, members);
      rememberGroup(groupId, name);
      return { groupId, name };
    },
    "GET /api/invitations": async () => {
      const { client: c } = signedIn();
      const invitations = await c.http.invitations();
      return {
        invitations: await Promise.all(
          invitations.map(async (i) => ({
            groupId: i.groupId,
            name: i.name,
            invitedBy: await c.usernameOf(i.invitedBy).catch(() => i.invitedBy),
          })),
        ),
      };
    },
    "POST /api/invitations/:groupId/accept": async (_body, [groupId]) => {
      const { client: c } = signedIn();
      const id = uuid(groupId);
      await c.http.acceptInvitation(id);
      const info = await c.http.group(id);
      rememberGroup(id, info.name);
      return { groupId: id, name: info.name };
    },
    "POST /api/invitations/:groupId/decline": async (_body, [groupId]) => {
      const { client: c } = signedIn();
      await c.http.declineInvitation(uuid(groupId));
      return {};
    },
    "POST /api/groups/:groupId/leave": async (_body, [groupId]) => {
      const { client: c } = signedIn();
      const id = uuid(groupId);
      await c.http.removeGroupMember(id, c.userId);
      const { [id]: _left, ...rest } = groupNames();
      writeKnownGroups(c.store, rest);
      return {};
    },
    "POST /api/groups/:groupId/invite": async (body, [groupId]) => {
      const { client: c } = signedIn();
      const user = await c.findUser(text(body.username, "username", 64).toLowerCase());
      await c.http.addGroupMember(uuid(groupId), user.userId);
      return { invited: user };
    },
    "GET /api/safety/:userId": (_body, [userId]) => {
      const { client: c } = signedIn();
      return { numbers: c.safetyNumbers(uuid(userId)) };
    },
    // Only what the page showed and the user compared (`compared`, the `numbers` of GET
    // /api/safety/:userId): a device added or re-keyed since was never seen and stays unverified,
    // listed in `left` (as the CLI's `/verify <user> confirm`).
    "POST /api/safety/:userId/verify": (body, [userId]) => {
      const { client: c } = signedIn();
      const id = uuid(userId);
      const left = c.markVerified(id, comparedNumbers(body.compared));
      return { numbers: c.safetyNumbers(id), left };
    },
    "GET /api/devices": async () => {
      const { client: c } = signedIn();
      return { devices: await c.http.devices(), self: c.deviceId };
    },
    "GET /api/export": async () => {
      const { client: c } = signedIn();
      return c.http.exportMe();
    },
    "POST /api/erase": async (body) => {
      const { client: c, messenger: m } = signedIn();
      const password = text(body.password, "password", 256);
      const { erasureId } = await c.http.eraseMe(password);
      m.stop();
      const deadline = Date.now() + 60_000;
      for (;;) {
        const state = await c.http.erasure(erasureId);
        if (state.status === "done" && state.receipt) {
          const published = (await c.http.erasureSigningKey()).publicKey;
          const check = checkReceipt(state.receipt, published);
          // The account is gone: so are its keys, sessions and history on this device. The page
          // keeps showing the receipt, for the user to save.
          c.close();
          client = undefined;
          messenger = undefined;
          status = "signed-out";
          for (const suffix of ["", "-wal", "-shm"]) rmSync(`${options.storePath}${suffix}`, { force: true });
          return { erasureId, receipt: state.receipt, check };
        }
        if (Date.now() > deadline)
          throw new HttpError(504, `the erasure has not finished yet; its id is ${erasureId}`);
        await Bun.sleep(250);
      }
    },
  };

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: options.port ?? 0,
    maxRequestBodySize: MAX_BODY_BYTES,
    fetch: async (request, srv) => {
      const url = new URL(request.url);
      const port = srv.port;
      const host = request.headers.get("host");
      if (host !== `127.0.0.1:${port}` && host !== `localhost:${port}`) {
        return new Response("wrong host", { status: 421 });
      }
      if (url.pathname === "/api/events") {
        const origin = request.headers.get("origin");
        if (!same(url.searchParams.get("secret"), secret))
          return new Response("secret required", { status: 401 });
        if (origin !== `http://127.0.0.1:${port}` && origin !== `http://localhost:${port}`) {
          return new Response("wrong origin", { status: 403 });
        }
        return srv.upgrade(request, { data: undefined })
          ? undefined
          : new Response("upgrade failed", { status: 400 });
      }
      if (url.pathname.startsWith("/api/")) {
        if (!same(request.headers.get("x-clearbox-secret"), secret))
          return reply(401, { error: "secret required" });
        return handle(request, url);
      }
      return serveAsset(assetsDir, url.pathname);
    },
    websocket: {
      open(ws) {
        sockets.add(ws);
        ws.send(JSON.stringify({ type: "status", status }));
      },
      close(ws) {
        sockets.delete(ws);
      },
      message() {
        // The page only listens on this socket.
      },
    },
  });

  async function handle(request: Request, url: URL): Promise<Response> {
    for (const [key, handler] of Object.entries(routes)) {
      const [method, pattern] = key.split(" ");
      if (method !== request.method) continue;
      const params = match(pattern, url.pathname);
      if (!params) continue;
      let body: Json = {};
      if (method === "POST") {
        try {
          const parsed: unknown = JSON.parse((await request.text()) || "{}");
          if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error();
          body = parsed as Json;
        } catch {
          return reply(400, { error: "the body must be a JSON object" });
        }
      }
      try {
        return reply(200, await handler(body, params, url));
      } catch (error) {
        if (error instanceof HttpError) return reply(error.status, { error: error.message });
        if (error instanceof ClearBoxApiError) {
          return reply(error.status, { error: error.message, code: error.code });
        }
        if (error instanceof TypeError) return reply(502, { error: "the ClearBox server cannot be reached" });
        return reply(500, { error: (error as Error).message });
      }
    }
    return reply(404, { error: "no such route" });
  }

  const port = Number(server.port);
  return {
    url: `http://127.0.0.1:${port}/?secret=${secret}`,
    port,
    async stop() {
      messenger?.stop();
      await server.stop(true);
      client?.close();
    },
  };
}

function reply(status: number, body: unknown): Response {
  return Response.json(body ?? {}, { status, headers: { "cache-control": "no-store" } });
}

function same(given: string | null, secret: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(secret);
  return a.length === b.length && timingSafeEqual(a, b);
}

function match(pattern: string, path: string): string[] | undefined {
  const want = pattern.split("/");
  const have = path.split("/");
  if (want.length !== have.length) return undefined;
  const params: string[] = [];
  for (const [i, part] of want.entries()) {
    if (part.startsWith(":")) params.push(decodeURIComponent(have[i]));
    else if (part !== have[i]) return undefined;
  }
  return params;
}

function text(value: unknown, field: string, max: number): string {
  if (typeof value !== "string" || value.trim() === "" || value.length > max) {
    throw new HttpError(400, `${field}: a non-empty text of at most ${max} characters`);
  }
  return value;
}

/** A safety number as `ClearBoxClient.safetyNumbers` shows it: 60 digits in groups of five. */
const SAFETY_NUMBER = /^(\d{5} ){11}\d{5}$/;

/**
 * `compared` of a verification: the safety numbers the page showed, `{deviceId, safetyNumber}`
 * each (device ids 1-127, at most 127 entries); 400 for anything else, before anything is marked.
 */
function comparedNumbers(value: unknown): { deviceId: number; safetyNumber: string }[] {
  const refuse = () =>
    new HttpError(400, "compared: the numbers shown, a list of {deviceId, safetyNumber} (at most 127)");
  if (!Array.isArray(value) || value.length === 0 || value.length > 127) throw refuse();
  return value.map((entry: unknown) => {
    const { deviceId, safetyNumber } = (entry ?? {}) as Record<string, unknown>;
    if (typeof entry !== "object" || !Number.isInteger(deviceId) || (deviceId as number) < 1) throw refuse();
    if ((deviceId as number) > 127 || typeof safetyNumber !== "string" || !SAFETY_NUMBER.test(safetyNumber))
      throw refuse();
    return { deviceId: deviceId as number, safetyNumber };
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function uuid(value: string): string {
  const lower = value.toLowerCase();
  if (!UUID.test(lower)) throw new HttpError(400, "not a user id");
  return lower;
}

/** A user id, or `group:<id>`. */
function conversationId(value: string): string {
  return value.startsWith("group:") ? `group:${uuid(value.slice(6))}` : uuid(value);
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
};

function serveAsset(dir: string, pathname: string): Response {
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    return new Response("malformed path", { status: 400 });
  }
  const relative = normalize(decoded).replace(/^(\.\.[/\\])+/, "");
  let file = join(dir, relative === "/" ? "index.html" : relative);
  if (!file.startsWith(dir) || !existsSync(file) || !statSync(file).isFile()) file = join(dir, "index.html");
  const type = TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream";
  return new Response(Bun.file(file), {
    headers: {
      "content-type": type,
      "content-security-policy":
        "default-src 'self'; connect-src 'self' ws://127.0.0.1:* ws://localhost:*; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
      // No other page may frame this one (clickjacking: a click on "Erase my account" lured through a
      // transparent frame); `frame-ancestors` for current browsers, X-Frame-Options for older ones.
      "x-frame-options": "DENY",
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
    },
  });
}
