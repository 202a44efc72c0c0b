import { EventEmitter } from "node:events";
import { CiphertextMessageType } from "@signalapp/libsignal-client";
import ReconnectingWebSocket from "partysocket/ws";
import type { AcceptedFrame, ClientFrame, RejectedFrame, ServerFrame } from "../protocol/index.ts";
import { CloseCode } from "../protocol/index.ts";
import type { ClearBoxClient } from "./client.ts";
import { ClearBoxApiError, type PasswordChange } from "./http.ts";
import { SocketReauthentication } from "./reauth.ts";
import { BUSY_RETRIES, RATE_LIMIT_RETRIES, RATE_LIMIT_WAIT_MS, retryWaitMs } from "./socket.ts";

/** A text message as the user sees it: names, not ids. `conversation` is a user id or `group:<id>`. */
export interface ChatMessage {
  id: string;
  conversation: string;
  from: { userId: string; username: string; deviceId: number };
  /** Set for a group message. */
  group?: string;
  outgoing: boolean;
  text: string;
  /** Server time the message was accepted (Unix ms); for a queued outgoing message, when it was queued. */
  ts: number;
  /** Outgoing only: `queued` until the server accepted it (`sent`), or `failed` with the refusal. */
  state: "queued" | "sent" | "failed" | "received";
  /**
   * On the `message` event that reports a `failed` send only (not kept in the history): why, as
   * the server said it: the `rejected` frame's code (`unknown_recipient`, `not_member`,
   * `rate_limited`, …) and message, or the HTTP error's code when the group could not be read.
   */
  refusal?: MessageRefusal;
}

/** Why a send failed: a protocol reject code (docs/PROTOCOL.md) or an HTTP error code, as answered. */
export interface MessageRefusal {
  code: string;
  message?: string;
  /** For `rate_limited`: the ms until the server takes sends again. */
  retryAfterMs?: number;
}

/** The refusal a `rejected` frame carries, for ChatMessage.refusal. */
function refusalOf(frame: RejectedFrame): MessageRefusal {
  return {
    code: frame.code,
    ...(typeof frame.message === "string" ? { message: frame.message } : {}),
    ...(typeof frame.retryAfterMs === "number" ? { retryAfterMs: frame.retryAfterMs } : {}),
  };
}

/** The events a Messenger emits (EventEmitter names and argument shapes). */
export interface MessengerEvents {
  /** A decrypted incoming message, or one of ours whose state changed. */
  message: [ChatMessage];
  /**
   * The socket is up (`online`), down and being retried (`offline`), or stopped for good (`stopped`).
   * `offline` comes when an open socket closes (with its close `code` and `reason`), and once per
   * outage when an attempt fails before a socket opened (the server unreachable, a refresh that
   * failed): then `reason` is the error's message, e.g. `cannot reach the server at <url>: …`.
   */
  status: ["online" | "offline" | "stopped", { code?: number; reason?: string }];
  presence: [{ userId: string; username?: string; online: boolean; lastSeen: number }];
  /**
   * A contact's device now has a different identity key than before (reinstall, or a server
   * substituting keys), or a contact whose keys the user verified has a device not seen before (a
   * new login, or a server adding a device): the user should compare safety numbers again before
   * trusting it.
   */
  identityChanged: [{ userId: string; username?: string; deviceId: number }];
  /**
   * A message that could not be decrypted or processed: it is acknowledged and dropped, unless it
   * failed after its decryption (its store write, a `message` listener that threw), then it comes
   * again on the next connection.
   */
  undecryptable: [{ id: string; from: { user: string; device: number }; reason: string }];
}

/** Backoff of reconnects: the first wait is drawn in [minDelayMs/2, 3·minDelayMs/2), then ×1.5 each time, at most maxDelayMs. */
export interface BackoffOptions {
  minDelayMs?: number;
  maxDelayMs?: number;
}

/** Close codes after which reconnecting cannot help (docs/PROTOCOL.md, close codes). */
const FINAL_CLOSE_CODES = new Set<number>([
  CloseCode.revoked,
  CloseCode.deviceRemoved,
  CloseCode.replaced,
  CloseCode.erased,
]);

/** What travels inside the end-to-end encryption (never seen by the server). */
type Payload =
  /**
   * `group`: the group it was sent in, `null` for a 1:1 message. The `group` of a delivery is the
   * server's, outside the encryption; this one is what the message is shown in, so a server cannot
   * move a message to another group, or a 1:1 message into a group. Messages of earlier versions
   * lack it and are shown where the server says.
   */
  | { v: 1; t: "text"; text: string; group?: string | null }
  /** This device's sender key for a group, sent 1:1 to each member before its first group message. */
  | { v: 1; t: "sk"; group: string; dist: string }
  /**
   * "I cannot read your group messages": sent 1:1 by a member device without the sender's key (a
   * device added later, or state lost); a member's sender answers with "sk".
   */
  | { v: 1; t: "sk-req"; group: string };

const encodePayload = (payload: Payload) => JSON.stringify(payload);

function decodePayload(bytes: Uint8Array): Payload {
  const value = JSON.parse(new TextDecoder().decode(bytes)) as Payload;
  if (value?.v !== 1 || (value.t !== "text" && value.t !== "sk" && value.t !== "sk-req")) {
    throw new Error("unknown payload");
  }
  if (value.t === "text" && typeof value.text !== "string") throw new Error("text payload without text");
  if (
    value.t === "text" &&
    value.group !== undefined &&
    value.group !== null &&
    typeof value.group !== "string"
  ) {
    throw new Error("text payload with a malformed group");
  }
  if (value.t === "sk" && (typeof value.group !== "string" || typeof value.dist !== "string")) {
    throw new Error("sender-key payload without group or key");
  }
  if (value.t === "sk-req" && typeof value.group !== "string") throw new Error("key request without group");
  return value;
}

interface OutboxRow {
  seq: number;
  id: string;
  kind: "user" | "group";
  target: string;
  payload: string;
  created_at: number;
}

/** How often the socket's holder renews its lease on the store, and when a lease not renewed lapses. */
const LEASE_RENEW_MS = 1_000;
const LEASE_TTL_MS = 5_000;

/** Thrown by `Messenger.start` when another live process holds the store's socket. */
export class StoreInUseError extends Error {
  override name = "StoreInUseError";
  constructor(readonly pid: number) {
    super(
      `this store is in use by another ClearBox process (pid ${pid}); its sends can be queued, not sent, here`,
    );
  }
}

/**
 * What names a received message in the local store: `senderUser/senderDevice/id`. The id alone
 * does not: senders choose ids, and anyone who learned one (a group message both received) could
 * send another message with it.
 */
function receivedKey(frame: { id: string; from: { user: string; device: number } }): string {
  return `${frame.from.user}/${frame.from.device}/${frame.id}`;
}

/** How long the ids of handled messages are kept to drop redeliveries (far past the default 30-day retention). */
const RECEIVED_IDS_KEPT_MS = 400 * 24 * 3600_000;

/** A device asks one sender for one group's key at most this often. */
const KEY_REQUEST_INTERVAL_MS = 60_000;

/** How long an answer to a `send` may take before the send is tried again on a new socket. */
const ANSWER_TIMEOUT_MS = 30_000;

/**
 * Acks are gathered for this long (ms) and sent in one frame, or at once when a frame is full
 * (ACKS_PER_FRAME, the protocol's most): each frame spends the device's frame budget
 * (DEVICE_RATE_LIMIT, default 100 a second, a burst of 200), and a backlog is delivered as fast as
 * it is read, so an ack per message was refused past the budget (`error rate_limited`) and its
 * messages were delivered again at every connection.
 */
const ACK_GATHER_MS = 100;
/** Messages one ack frame names at most (docs/PROTOCOL.md: 1-1000). */
const ACKS_PER_FRAME = 1000;
/**
 * A frame over the device's frame budget other than a send is answered `error rate_limited`, which
 * names no frame (docs/PROTOCOL.md). The acks and the presence watch sent within this long (ms)
 * before such an answer are taken for refused and sent again after FRAME_BUDGET_WAIT_MS: an ack
 * twice is harmless, and a refused watch left the session without presence.
 */
const REFUSED_WITHIN_MS = 2_000;
/**
 * The pause before frames refused by the frame budget go again (ms): the budget refills within a
 * second. Doubled for each round refused again within FRAME_BUDGET_CALM_MS of the last (the answer
 * names no frame, so the resent acks and watch can keep taking each other's room), at most
 * FRAME_BUDGET_MAX_WAIT_MS; by then the bucket has refilled whole.
 */
const FRAME_BUDGET_WAIT_MS = 1_000;
const FRAME_BUDGET_MAX_WAIT_MS = 30_000;
const FRAME_BUDGET_CALM_MS = 10_000;

type AckEntry = { id: string; from: { user: string; device: number } };
const ackKey = (a: AckEntry) => `${a.from.user}/${a.from.device}/${a.id}`;

/**
 * One device's chat session on top of a `ClearBoxClient`: a single WebSocket for sending and
 * receiving, reopened after any drop with exponential backoff and jitter (partysocket's
 * ReconnectingWebSocket, with a fresh access token for each attempt), an outbox that keeps sends
 * made while offline in the store and sends each with its id until the server answers (the server
 * delivers an id once, docs/PROTOCOL.md), decryption in arrival order, acks after the message is
 * stored in the local history (gathered for ACK_GATHER_MS into one frame), usernames instead of
 * ids, presence of contacts, and group messages with sender keys (distributed to members 1:1,
 * replaced when a member left).
 *
 * The socket's access token is renewed in-band (`auth` frames) before it expires; a socket closed
 * with 4440 (token expired, e.g. after the process slept) is reopened with a refreshed token.
 *
 * Events: see `MessengerEvents`. Stops for good on close codes 4401, 4404, 4409 and 4410.
 */
export class Messenger extends EventEmitter<MessengerEvents> {
  private socket?: ReconnectingWebSocket;
  private token = "";
  private online = false;
  private stopped = false;
  private flushing = false;
  private readonly pending = new Map<string, (answer: AcceptedFrame | RejectedFrame | undefined) => void>();
  private inbound: Promise<void> = Promise.resolve();
  /** Users in the socket's presence watch list; a new correspondent is added to it. */
  private watched = new Set<string>();
  /** Renews the open socket's access token in-band before it expires (4440 otherwise). */
  private reauth?: SocketReauthentication;
  /** Messages handled and not acked yet (sent within ACK_GATHER_MS, or at the next open). */
  private acks: AckEntry[] = [];
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  /** Ack frames sent on this socket within REFUSED_WITHIN_MS, with when (Date.now()). */
  private sentAcks: { messages: AckEntry[]; at: number }[] = [];
  /** When the presence watch was last sent on this socket (Date.now()). */
  private watchSentAt = Number.NEGATIVE_INFINITY;
  /** Frames refused by the frame budget wait for this before they go again (acks gather meanwhile). */
  private refusedTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly client: ClearBoxClient,
    private readonly options: BackoffOptions & { connectionTimeoutMs?: number } = {},
  ) {
    super();
    const listen = () =>
      client.store.identity.onIdentityChange((userId, deviceId) => this.identityChanged(userId, deviceId));
    listen();
    client.onStoreReplaced(listen);
  }

  /** Opens the socket (and keeps it open) and sends whatever the outbox holds. */
  start(): void {
    if (this.socket) return;
    const owner = Messenger.socketOwner(this.client);
    if (owner !== undefined) throw new StoreInUseError(owner);
    this.takeLease();
    // Ids of messages handled long ago cannot come back: the server redelivers only what was not
    // acknowledged, and keeps nothing past its retention.
    this.client.store.db.query("delete from received where at < ?").run(Date.now() - RECEIVED_IDS_KEPT_MS);
    this.leaseTimer = setInterval(() => {
      this.takeLease();
      // Sends queued by another process on this store (`send` while `chat` runs) go out here.
      if (this.online && !this.flushing && this.queued > 0) void this.flush();
    }, LEASE_RENEW_MS);
    const client = this.client;
    const holder = this;
    const ca = client.ca;
    const url = new URL("/v1/ws", client.serverUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    // Bun's WebSocket takes headers: the token goes in Authorization, never in the URL.
    class AuthorizedWebSocket extends WebSocket {
      constructor(address: string | URL) {
        super(address, {
          headers: { authorization: `Bearer ${holder.token}` },
          ...(ca ? { tls: { ca } } : {}),
        });
      }
    }
    const min = this.options.minDelayMs ?? 500;
    // The last upgrade was refused 401 (see the `error` listener): the server no longer takes the
    // access token although it has not expired by this clock (its JWT_SECRET changed, e.g. a
    // restore into a new DATA_DIR, or the device was revoked while this socket was down). The next
    // attempt refreshes first: retrying the same token would fail until it expires (up to
    // ACCESS_TOKEN_TTL_SECONDS), and a revoked device learns it from the refresh's 401.
    let refreshFirst = false;
    const socket = new ReconnectingWebSocket(
      async () => {
        try {
          this.token = refreshFirst
            ? (await client.http.refresh()).accessToken
            : await client.http.accessToken();
          refreshFirst = false;
        } catch (error) {
          if (error instanceof ClearBoxApiError && error.status === 401) {
            this.stop({
              code: CloseCode.revoked,
              reason: "signed out (this device's tokens were revoked, or the account erased): log in again",
            });
          }
          throw error;
        }
        return url.href;
      },
      undefined,
      {
        WebSocket: AuthorizedWebSocket,
        // partysocket reads the options at every attempt: a getter draws new jitter each time.
        get minReconnectionDelay() {
          return min / 2 + Math.random() * min;
        },
        reconnectionDelayGrowFactor: 1.5,
        maxReconnectionDelay: this.options.maxDelayMs ?? 30_000,
        connectionTimeout: this.options.connectionTimeoutMs ?? 10_000,
        minUptime: 2_000,
        maxEnqueuedMessages: 0,
        // A 4401 during a password change is reconnected by `changePassword`, with the new token.
        shouldReconnectOnClose: (event) => !FINAL_CLOSE_CODES.has(event.code),
      },
    );
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.online = true;
      this.reauth?.stop();
      this.reauth = new SocketReauthentication(client.http, (frame) => this.send(frame)).start();
      this.emit("status", "online", {});
      const contacts = client.contacts().map((c) => c.userId);
      this.watched = new Set(contacts);
      if (contacts.length > 0) this.sendWatch();
      // Messages handled while the last socket closed: their acks go on this one.
      this.sendAcks();
      void this.flush();
    });
    socket.addEventListener("close", (event) => {
      this.online = false;
      this.reauth?.stop();
      // What this socket sent and may have had refused: the next socket's drain delivers again
      // whatever was not acked, and it sends its watch list at open.
      this.sentAcks = [];
      this.watchSentAt = Number.NEGATIVE_INFINITY;
      clearTimeout(this.refusedTimer);
      this.refusedTimer = undefined;
      for (const resolve of this.pending.values()) resolve(undefined);
      this.pending.clear();
      if (event.code === CloseCode.revoked && this.rekeying > 0) {
        // Expected: the password change re-keys this device and closes its sockets. It reconnects
        // with the new token once the change answered (`changePassword`).
        this.revokedWhileRekeying = { code: event.code, reason: event.reason };
        this.emit("status", "offline", { code: event.code, reason: event.reason });
      } else if (FINAL_CLOSE_CODES.has(event.code)) this.stop({ code: event.code, reason: event.reason });
      else if (!this.stopped) this.emit("status", "offline", { code: event.code, reason: event.reason });
    });
    // A connection attempt that fails before a socket opens (no server there, the token refresh
    // failed) fires `error` only: said once per outage, or a session started while the server was
    // down showed nothing at all while it retried.
    let unreachableSaid = false;
    socket.addEventListener("open", () => {
      unreachableSaid = false;
    });
    socket.addEventListener("close", () => {
      unreachableSaid = true;
    });
    socket.addEventListener("error", (event) => {
      // Bun's WebSocket names the status of a refused upgrade in its message only:
      // "… failed: Expected 101 status code: 401".
      if (/\b101\b.*\b401\b/.test((event as { message?: string }).message ?? "")) refreshFirst = true;
      if (this.online || this.stopped || unreachableSaid) return;
      unreachableSaid = true;
      this.emit("status", "offline", { reason: (event as { message?: string }).message });
    });
    socket.addEventListener("message", (event) => this.dispatch(String(event.data)));
  }

  /** Password changes under way (`changePassword`): a 4401 close meanwhile is theirs. */
  private rekeying = 0;
  /** A 4401 close that came while a password change was under way. */
  private revokedWhileRekeying?: { code: number; reason: string };

  /**
   * Changes the account's password (`ClearBoxHttp.changePassword`, `POST /v1/me/password`) and
   * stores the new session the server answers with. The server re-keys this device and closes its
   * socket (4401): that close does not stop the Messenger, which reconnects with the new token once
   * the change answered (a socket still open on the old token is closed and reopened). Queued and
   * unanswered sends go out again on the new socket. When the change fails, the socket is left as
   * it was, unless a 4401 came meanwhile: then the Messenger stops, as on any revocation.
   * `logoutDevices` (default true) signs the account's other devices out.
   */
  async changePassword(input: PasswordChange): Promise<void> {
    this.rekeying++;
    let changed = false;
    try {
      await this.client.http.changePassword(input);
      changed = true;
    } finally {
      this.rekeying--;
      const revoked = this.revokedWhileRekeying;
      if (this.rekeying === 0) this.revokedWhileRekeying = undefined;
      if (changed && this.socket && !this.stopped) this.socket.reconnect();
      else if (!changed && revoked && this.rekeying === 0) this.stop(revoked);
    }
  }

  /** Closes the socket for good (no reconnect); queued sends stay in the outbox for the next start. */
  stop(detail: { code?: number; reason?: string } = {}): void {
    if (this.stopped) return;
    this.sendAcks(true);
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    clearTimeout(this.refusedTimer);
    this.refusedTimer = undefined;
    this.stopped = true;
    this.online = false;
    this.reauth?.stop();
    if (this.leaseTimer) {
      clearInterval(this.leaseTimer);
      this.leaseTimer = undefined;
      try {
        this.client.store.db.query("delete from socket_lease where pid = ?").run(process.pid);
      } catch {
        // The store was closed first.
      }
    }
    this.socket?.close(1000);
    for (const resolve of this.pending.values()) resolve(undefined);
    this.pending.clear();
    this.emit("status", "stopped", detail);
  }

  /**
   * The process id of another live process holding this store's socket (a running `chat`, `listen`
   * or browser client), or undefined. The server allows one socket per device (a second closes the
   * first, 4409), so a second process on the same store queues its sends in the store's outbox
   * instead, and the holder sends them.
   */
  static socketOwner(client: ClearBoxClient): number | undefined {
    const row = client.store.db
      .query<{ pid: number; heartbeat: number }, []>("select pid, heartbeat from socket_lease limit 1")
      .get();
    if (!row || row.pid === process.pid || Date.now() - row.heartbeat > LEASE_TTL_MS) return undefined;
    try {
      process.kill(row.pid, 0);
      return row.pid;
    } catch {
      return undefined; // That process is gone.
    }
  }

  private leaseTimer?: ReturnType<typeof setInterval>;

  private takeLease(): void {
    const db = this.client.store.db;
    db.transaction(() => {
      db.query("delete from socket_lease").run();
      db.query("insert into socket_lease (pid, heartbeat) values (?, ?)").run(process.pid, Date.now());
    })();
  }

  /** Whether the socket is open now. */
  get isOnline(): boolean {
    return this.online;
  }

  /**
   * Queues a text message to a user (by username or user id) and returns it as `queued`; it is sent
   * as soon as the socket is open, and a `message` event reports `sent` or `failed`.
   * Throws ClearBoxApiError 404 when no user has that name.
   */
  async sendText(to: string, text: string): Promise<ChatMessage> {
    const userId = UUID.test(to) ? to.toLowerCase() : (await this.client.findUser(to)).userId;
    if (!this.watched.has(userId)) this.watch([userId]);
    return this.enqueue("user", userId, userId, { v: 1, t: "text", text, group: null });
  }

  /** Queues a text message to a group (its members get it through this device's sender key). */
  async sendGroupText(groupId: string, text: string): Promise<ChatMessage> {
    return this.enqueue("group", groupId, `group:${groupId}`, { v: 1, t: "text", text, group: groupId });
  }

  /**
   * Creates a group of this user and invites the named users (usernames or ids); each becomes a
   * member once they accept (`ClearBoxHttp.acceptInvitation`). Returns the group's id.
   */
  async createGroup(name: string, members: string[]): Promise<string> {
    const ids: string[] = [];
    for (const member of members) {
      ids.push(UUID.test(member) ? member.toLowerCase() : (await this.client.findUser(member)).userId);
    }
    const { groupId } = await this.client.http.createGroup({ name, members: ids });
    return groupId;
  }

  /** Watches the presence of these users (and every contact): presence events follow. */
  watch(userIds: string[]): void {
    const all = new Set([...this.client.contacts().map((c) => c.userId), ...userIds]);
    this.watched = all;
    if (this.online) this.sendWatch();
  }

  /** The local history of one conversation (a user id, or `group:<id>`), oldest first, at most `limit`. */
  history(conversation: string, limit = 200): ChatMessage[] {
    const rows = this.client.store.db
      .query<
        {
          id: string;
          conversation: string;
          sender: string;
          sender_device: number;
          outgoing: number;
          text: string;
          ts: number;
          state: ChatMessage["state"];
        },
        [string, number]
      >("select * from (select * from history where conversation = ? order by ts desc limit ?) order by ts")
      .all(conversation, limit);
    return rows.map((row) => ({
      // A received message's row is keyed `sender/device/id` (`receivedKey`); its id is the last part.
      id: row.outgoing === 1 ? row.id : row.id.slice(row.id.lastIndexOf("/") + 1),
      conversation: row.conversation,
      from: { userId: row.sender, username: this.knownName(row.sender), deviceId: row.sender_device },
      ...(row.conversation.startsWith("group:") ? { group: row.conversation.slice(6) } : {}),
      outgoing: row.outgoing === 1,
      text: row.text,
      ts: row.ts,
      state: row.state,
    }));
  }

  /** Conversations with a message, newest first. */
  conversations(): { conversation: string; lastTs: number }[] {
    return this.client.store.db
      .query<{ conversation: string; last_ts: number }, []>(
        "select conversation, max(ts) as last_ts from history group by conversation order by last_ts desc",
      )
      .all()
      .map((row) => ({ conversation: row.conversation, lastTs: row.last_ts }));
  }

  /** Messages still waiting in the outbox. */
  get queued(): number {
    return this.client.store.db.query<{ n: number }, []>("select count(*) as n from outbox").get()?.n ?? 0;
  }

  private knownName(userId: string): string {
    return (
      this.client.store.db
        .query<{ username: string }, [string]>("select username from contacts where user_id = ?")
        .get(userId)?.username ?? userId
    );
  }

  private enqueue(
    kind: "user" | "group",
    target: string,
    conversation: string,
    payload: Payload,
  ): ChatMessage {
    const id = crypto.randomUUID();
    const now = Date.now();
    const db = this.client.store.db;
    db.transaction(() => {
      db.query("insert into outbox (id, kind, target, payload, created_at) values (?, ?, ?, ?, ?)").run(
        id,
        kind,
        target,
        encodePayload(payload),
        now,
      );
      this.record({
        id,
        conversation,
        from: {
          userId: this.client.userId,
          username: this.client.username ?? "",
          deviceId: this.client.deviceId,
        },
        ...(kind === "group" ? { group: target } : {}),
        outgoing: true,
        text: payload.t === "text" ? payload.text : "",
        ts: now,
        state: "queued",
      });
    })();
    void this.flush();
    return this.history(conversation).find((m) => m.id === id) as ChatMessage;
  }

  /** Stores a message in the history under `rowId` (its id; a received one's `receivedKey`). */
  private record(message: ChatMessage, rowId = message.id): void {
    this.client.store.db
      .query(
        `insert into history (id, conversation, sender, sender_device, outgoing, text, ts, state)
         values (?, ?, ?, ?, ?, ?, ?, ?) on conflict (id) do update set ts = excluded.ts, state = excluded.state`,
      )
      .run(
        rowId,
        message.conversation,
        message.from.userId,
        message.from.deviceId,
        message.outgoing ? 1 : 0,
        message.text,
        message.ts,
        message.state,
      );
  }

  private settle(id: string, state: "sent" | "failed", ts?: number, refusal?: MessageRefusal): void {
    const db = this.client.store.db;
    db.query("delete from outbox where id = ?").run(id);
    if (ts === undefined) db.query("update history set state = ? where id = ?").run(state, id);
    else db.query("update history set state = ?, ts = ? where id = ?").run(state, ts, id);
    const row = db
      .query<{ conversation: string }, [string]>("select conversation from history where id = ?")
      .get(id);
    const message = row ? this.history(row.conversation).find((m) => m.id === id) : undefined;
    if (message) this.emit("message", refusal ? { ...message, refusal } : message);
  }

  /** Sends the outbox in order, one send at a time, while the socket is open. */
  private async flush(): Promise<void> {
    if (this.flushing || !this.online) return;
    this.flushing = true;
    try {
      const db = this.client.store.db;
      while (this.online && !this.stopped) {
        const next = db.query<OutboxRow, []>("select * from outbox order by seq limit 1").get();
        if (!next) break;
        const outcome = await this.deliver(next);
        if (outcome === "retry") break; // the socket dropped: the same id goes again after reconnecting
      }
    } catch (error) {
      // A network error of an HTTP call (bundles, group info): try again on the next open.
      this.emit("status", "offline", { reason: (error as Error).message });
    } finally {
      this.flushing = false;
    }
  }

  /** One outbox entry to the server: settled (sent or failed), or `retry` when the socket went away. */
  private async deliver(row: OutboxRow): Promise<"settled" | "retry"> {
    const payload = JSON.parse(row.payload) as Payload;
    if (row.kind === "user") {
      const answer = await this.sendDirect(row.id, row.target, row.payload);
      if (!answer) return "retry";
      if (answer.type === "accepted") this.settle(row.id, "sent", answer.ts);
      else this.settle(row.id, "failed", undefined, refusalOf(answer));
      return "settled";
    }
    let groupInfo: Awaited<ReturnType<ClearBoxClient["http"]["group"]>>;
    try {
      groupInfo = await this.client.http.group(row.target);
    } catch (error) {
      if (error instanceof ClearBoxApiError && error.status < 500) {
        this.settle(row.id, "failed", undefined, { code: error.code, message: error.message });
        return "settled";
      }
      throw error;
    }
    const distributionId = await this.shareSenderKey(row.target, groupInfo.members);
    if (!distributionId) return "retry";
    const message = await this.client.groupEncrypt(distributionId, encodePayload(payload));
    const answer = await this.answered(row.id, {
      type: "send",
      id: row.id,
      to: { group: row.target },
      message,
    });
    if (!answer) return "retry";
    if (answer.type === "accepted") this.settle(row.id, "sent", answer.ts);
    else this.settle(row.id, "failed", undefined, refusalOf(answer));
    return "settled";
  }

  /**
   * Makes sure every member has this device's current sender key for the group: a member who left
   * since the last share makes a new key (distribution id) that goes to all remaining members, so
   * the one who left cannot read what follows. Returns the distribution id, or undefined when the
   * socket dropped meanwhile.
   */
  private async shareSenderKey(groupId: string, members: string[]): Promise<string | undefined> {
    const db = this.client.store.db;
    const row = db
      .query<{ distribution_id: string; shared_with: string }, [string]>(
        "select distribution_id, shared_with from group_keys where group_id = ?",
      )
      .get(groupId);
    let distributionId = row?.distribution_id ?? crypto.randomUUID();
    let sharedWith = new Set<string>(row ? (JSON.parse(row.shared_with) as string[]) : []);
    const current = new Set(members);
    if ([...sharedWith].some((member) => !current.has(member))) {
      distributionId = crypto.randomUUID();
      sharedWith = new Set();
    }
    const save = () =>
      db
        .query(
          `insert into group_keys (group_id, distribution_id, shared_with) values (?, ?, ?)
           on conflict (group_id) do update set distribution_id = excluded.distribution_id, shared_with = excluded.shared_with`,
        )
        .run(groupId, distributionId, JSON.stringify([...sharedWith]));
    save();
    const distribution = Buffer.from(await this.client.groupDistribution(distributionId)).toString("base64");
    for (const member of members) {
      if (sharedWith.has(member) || member === this.client.userId) continue;
      const answer = await this.sendDirect(
        crypto.randomUUID(),
        member,
        encodePayload({ v: 1, t: "sk", group: groupId, dist: distribution }),
      );
      if (!answer) return undefined;
      sharedWith.add(member);
      save();
    }
    return distributionId;
  }

  /**
   * Encrypts for every device of `userId` and sends with `id`; on `mismatched_devices` fetches the
   * user's devices again and re-encrypts (same id: the server stored nothing). Undefined when the
   * socket dropped before an answer.
   */
  private async sendDirect(
    id: string,
    userId: string,
    payload: string,
  ): Promise<AcceptedFrame | RejectedFrame | undefined> {
    let refreshDevices = false;
    for (let attempt = 0; attempt < 3; attempt++) {
      const messages = await this.client.encrypt(userId, payload, { refreshDevices });
      const answer = await this.answered(id, { type: "send", id, to: { user: userId }, messages });
      if (!answer || answer.type === "accepted" || answer.code !== "mismatched_devices") return answer;
      refreshDevices = true;
    }
    return { type: "rejected", id, code: "mismatched_devices" } as RejectedFrame;
  }

  /**
   * Sends a frame and waits for its answer; `busy` and `rate_limited` wait and go again with the
   * same id, unless a `rate_limited` says to wait longer than RATE_LIMIT_WAIT_MS (the account's
   * daily storage quota is spent): that rejection is returned, and the message fails. As
   * ClearBoxSocket's sends, at most BUSY_RETRIES sends are answered `busy` (an `error internal`
   * naming the send counts as one) and RATE_LIMIT_RETRIES `rate_limited` are sent again: past
   * either, the last refusal is returned and the message fails, so a server that answers nothing
   * else cannot keep the client resending it for as long as the socket stays open. Undefined when
   * the socket dropped before an answer (the message goes again on the next socket, counted anew).
   */
  private async answered(id: string, frame: ClientFrame): Promise<AcceptedFrame | RejectedFrame | undefined> {
    let busy = 0;
    let limited = 0;
    for (;;) {
      if (!this.online) return undefined;
      const answer = await new Promise<AcceptedFrame | RejectedFrame | undefined>((resolve) => {
        const timer = setTimeout(() => {
          this.pending.delete(id);
          resolve(undefined);
        }, ANSWER_TIMEOUT_MS);
        this.pending.set(id, (value) => {
          clearTimeout(timer);
          resolve(value);
        });
        this.send(frame);
      });
      const waits =
        answer?.type === "rejected" &&
        ((answer.code === "busy" && ++busy < BUSY_RETRIES) ||
          (answer.code === "rate_limited" &&
            (answer.retryAfterMs ?? 0) <= RATE_LIMIT_WAIT_MS &&
            ++limited <= RATE_LIMIT_RETRIES));
      if (answer?.type === "rejected" && waits) {
        await new Promise((wake) => setTimeout(wake, retryWaitMs(answer.retryAfterMs, 1000)));
        continue;
      }
      return answer;
    }
  }

  private send(frame: ClientFrame): void {
    if (this.online) this.socket?.send(JSON.stringify(frame));
  }

  /** Acks a handled message: within ACK_GATHER_MS, with the others handled meanwhile. */
  private ack(message: AckEntry): void {
    this.acks.push({ id: message.id, from: message.from });
    if (this.acks.length >= ACKS_PER_FRAME) this.sendAcks();
    else this.ackTimer ??= setTimeout(() => this.sendAcks(), ACK_GATHER_MS);
  }

  /**
   * Sends the gathered acks, ACKS_PER_FRAME a frame; offline, they wait for the next open. While
   * frames refused by the frame budget wait to go again, they wait with them (`force`: now, the
   * Messenger is stopping).
   */
  private sendAcks(force = false): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (!this.online || !this.socket || (this.refusedTimer && !force)) return;
    const now = Date.now();
    this.sentAcks = this.sentAcks.filter((f) => now - f.at <= REFUSED_WITHIN_MS);
    while (this.acks.length > 0) {
      const messages = this.acks.splice(0, ACKS_PER_FRAME);
      this.send({ type: "ack", messages });
      this.sentAcks.push({ messages, at: now });
    }
  }

  /** Sends the presence watch list (`watched`, the protocol's 1,000 at most). */
  private sendWatch(): void {
    this.watchSentAt = Date.now();
    this.send({ type: "presence.watch", users: [...this.watched].slice(0, 1000) });
  }

  /**
   * An `error rate_limited` naming no send: a frame over the device's frame budget was dropped,
   * and the answer does not say which. The acks and the watch list sent within REFUSED_WITHIN_MS
   * go again after FRAME_BUDGET_WAIT_MS, doubled per round refused again (one resend for any
   * number of refusals meanwhile); before,
   * refused acks were never sent again (their messages came back at every connection) and a
   * refused watch left the session without presence.
   */
  private frameRefused(): void {
    const now = Date.now();
    if (now - this.lastRefusedAt > FRAME_BUDGET_CALM_MS) this.refusedRounds = 0;
    this.lastRefusedAt = now;
    const refused = this.sentAcks.filter((f) => now - f.at <= REFUSED_WITHIN_MS);
    this.sentAcks = [];
    if (refused.length > 0) {
      const waiting = new Set(this.acks.map(ackKey));
      for (const frame of refused)
        for (const entry of frame.messages) {
          if (waiting.has(ackKey(entry))) continue;
          waiting.add(ackKey(entry));
          this.acks.push(entry);
        }
    }
    const rewatch = now - this.watchSentAt <= REFUSED_WITHIN_MS;
    if (rewatch) this.watchSentAt = Number.NEGATIVE_INFINITY;
    if ((refused.length === 0 && !rewatch) || this.refusedTimer) {
      if (rewatch) this.rewatch = true;
      return;
    }
    this.rewatch = rewatch;
    const wait = Math.min(FRAME_BUDGET_MAX_WAIT_MS, FRAME_BUDGET_WAIT_MS * 2 ** this.refusedRounds++);
    this.refusedTimer = setTimeout(() => {
      this.refusedTimer = undefined;
      if (!this.online) return;
      if (this.rewatch) this.sendWatch();
      this.rewatch = false;
      this.sendAcks();
    }, wait);
  }

  /** The watch list goes again when the refused frames do. */
  private rewatch = false;
  /** Resend rounds refused in a row (each waits twice as long), and when the last refusal came. */
  private refusedRounds = 0;
  private lastRefusedAt = Number.NEGATIVE_INFINITY;

  private dispatch(data: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    switch (frame.type) {
      case "accepted":
      case "rejected":
        this.pending.get(frame.id)?.(frame);
        this.pending.delete(frame.id);
        return;
      case "auth.ok":
        this.reauth?.acknowledged();
        return;
      case "error": {
        // `internal` names a send the server did not accept: it goes again with the same id, as a
        // `busy` would (docs/PROTOCOL.md); other errors concern frames without an answer.
        const resolve = frame.code === "internal" && frame.id ? this.pending.get(frame.id) : undefined;
        if (resolve && frame.id) {
          this.pending.delete(frame.id);
          resolve({ type: "rejected", id: frame.id, code: "busy", retryAfterMs: 250 });
        }
        if (frame.code === "rate_limited" && !frame.id) this.frameRefused();
        return;
      }
      case "message": {
        // In arrival order, one at a time: the server delivers a device's queue oldest first.
        // A receive that fails outside its decryption (the store closed under it: the client was
        // closed with messages still queued here; a `message` listener that threw) leaves the
        // message unacknowledged, so the server delivers it again on the next connection. It must
        // neither reject with nobody listening nor break the chain for the messages behind it.
        this.inbound = this.inbound
          .then(() => this.receive(frame))
          .catch((error: unknown) => {
            if (this.stopped) return;
            try {
              this.emit("undecryptable", {
                id: frame.id,
                from: frame.from,
                reason: (error as Error)?.message,
              });
            } catch {
              // A listener of this event threw too: nothing more to tell.
            }
          });
        return;
      }
      case "presence":
        void this.client.usernameOf(frame.user).then(
          (username) =>
            this.emit("presence", {
              userId: frame.user,
              username,
              online: frame.online,
              lastSeen: frame.lastSeen,
            }),
          () => this.emit("presence", { userId: frame.user, online: frame.online, lastSeen: frame.lastSeen }),
        );
        return;
      default:
        return;
    }
  }

  private async receive(frame: Extract<ServerFrame, { type: "message" }>): Promise<void> {
    const db = this.client.store.db;
    // A message is its id with its sender device: ids are chosen by senders, and another sender may
    // send one this device has seen (docs/PROTOCOL.md), which must neither hide this message nor replace it.
    // A store from before keys named the sender holds bare ids: a message handled then and redelivered
    // now (its ack lost) is seen too, not decrypted again (its message keys are spent, so it would
    // come out undecryptable). New rows always hold a `/`, so a bare id matches legacy rows only.
    const key = receivedKey(frame);
    const seen = db
      .query<{ id: string }, [string, string]>("select id from received where id in (?, ?)")
      .get(key, frame.id);
    if (!seen) {
      try {
        const plaintext = await this.client.decrypt({ from: frame.from, envelope: frame.envelope });
        const payload = decodePayload(plaintext);
        if (payload.t === "sk") {
          await this.client.processGroupDistribution(frame.from, Buffer.from(payload.dist, "base64"));
        } else if (payload.t === "sk-req") {
          void this.answerKeyRequest(frame.from.user, payload.group).catch(() => undefined);
        } else {
          if (payload.group !== undefined && payload.group?.toLowerCase() !== frame.group?.toLowerCase()) {
            throw new Error("the message names another conversation than the one it was delivered in");
          }
          let username = frame.from.user;
          try {
            username = await this.client.usernameOf(frame.from.user);
          } catch {
            // Shown by id until the directory answers.
          }
          const message: ChatMessage = {
            id: frame.id,
            conversation: frame.group ? `group:${frame.group}` : frame.from.user,
            from: { userId: frame.from.user, username, deviceId: frame.from.device },
            ...(frame.group ? { group: frame.group } : {}),
            outgoing: false,
            text: payload.text,
            ts: frame.ts,
            state: "received",
          };
          this.record(message, key);
          this.emit("message", message);
          if (!this.watched.has(frame.from.user) && frame.from.user !== this.client.userId) {
            this.watch([frame.from.user]);
          }
        }
      } catch (error) {
        this.emit("undecryptable", { id: frame.id, from: frame.from, reason: (error as Error).message });
        // A group message without the sender's key: ask the sender for it, so what follows is readable.
        if (frame.group && frame.envelope.type === CiphertextMessageType.SenderKey)
          this.requestKey(frame.from.user, frame.group);
      }
      db.query("insert or ignore into received (id, at) values (?, ?)").run(key, Date.now());
    }
    this.ack(frame);
  }

  /** When each (sender, group) key was last asked for: at most once a minute each. */
  private readonly keyRequests = new Map<string, number>();

  private requestKey(sender: string, groupId: string): void {
    const key = `${sender}:${groupId}`;
    const last = this.keyRequests.get(key) ?? 0;
    if (Date.now() - last < KEY_REQUEST_INTERVAL_MS) return;
    this.keyRequests.set(key, Date.now());
    void this.sendDirect(
      crypto.randomUUID(),
      sender,
      encodePayload({ v: 1, t: "sk-req", group: groupId }),
    ).catch(() => this.keyRequests.delete(key));
  }

  /** Sends this device's current sender key of `groupId` to `requester`, if both are its members. */
  private async answerKeyRequest(requester: string, groupId: string): Promise<void> {
    const row = this.client.store.db
      .query<{ distribution_id: string }, [string]>(
        "select distribution_id from group_keys where group_id = ?",
      )
      .get(groupId);
    if (!row) return; // We never sent to that group: there is no key to give.
    const { members } = await this.client.http.group(groupId); // 404 unless we are a member
    if (!members.includes(requester)) return;
    const distribution = Buffer.from(await this.client.groupDistribution(row.distribution_id)).toString(
      "base64",
    );
    await this.sendDirect(
      crypto.randomUUID(),
      requester,
      encodePayload({ v: 1, t: "sk", group: groupId, dist: distribution }),
    );
  }

  private identityChanged(userId: string, deviceId: number): void {
    const username = this.client.store.db
      .query<{ username: string }, [string]>("select username from contacts where user_id = ?")
      .get(userId)?.username;
    this.emit("identityChanged", { userId, username, deviceId });
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
