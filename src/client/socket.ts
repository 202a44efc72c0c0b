import type {
  AcceptedFrame,
  ClientFrame,
  ErrorFrame,
  GroupSend,
  MessageFrame,
  OutgoingMessage,
  RejectedFrame,
  ServerFrame,
} from "../protocol/index.ts";
import { type AccessTokens, SocketReauthentication } from "./reauth.ts";

export type {
  AcceptedFrame,
  AuthOkFrame,
  ClientFrame,
  ErrorFrame,
  MessageFrame,
  OutgoingMessage,
  PongFrame,
  PresenceFrame,
  RejectedFrame,
  ServerFrame,
} from "../protocol/index.ts";

/**
 * Sends of one message answered `busy` before the SDK hands the `busy` to the caller (the
 * Messenger's too: the message then fails): a server that never stops answering `busy` cannot keep
 * a client resending one message for ever.
 */
export const BUSY_RETRIES = 40;
/**
 * Times a send answered `rejected rate_limited` for a short while (no `retryAfterMs`: the device's
 * frame budget, which refills within a second; or one of at most RATE_LIMIT_WAIT_MS) is tried
 * again before the SDK hands the `rate_limited` to the caller.
 */
export const RATE_LIMIT_RETRIES = 30;
/**
 * The longest `rate_limited` wait (ms) a send sits out before going again, as the Messenger's: a
 * longer `retryAfterMs` is the account's daily storage quota, returned to the caller at once.
 */
export const RATE_LIMIT_WAIT_MS = 60_000;
/** The pause before resending a send refused by the frame budget, which names no wait (ms). */
const FRAME_BUDGET_WAIT_MS = 1_000;
/** The shortest pause before a resend (ms): the server's own `busy` wait (DEFAULT_FLOW_CONTROL). */
export const MIN_RETRY_WAIT_MS = 25;

/**
 * The pause (ms) before sending again a send the server refused with `retryAfterMs`: that wait,
 * held within [MIN_RETRY_WAIT_MS, RATE_LIMIT_WAIT_MS]; `fallbackMs` when the server named none or
 * something that is not a finite number. The server's figure is not trusted as given: a negative,
 * zero or fractional wait would resend at once in a loop, and one past 2^31 - 1 ms fires at once
 * too (timers hold a signed 32-bit delay), so a broken or hostile server could make a client flood it.
 */
export function retryWaitMs(retryAfterMs: unknown, fallbackMs: number): number {
  const wait = typeof retryAfterMs === "number" && Number.isFinite(retryAfterMs) ? retryAfterMs : fallbackMs;
  return Math.min(RATE_LIMIT_WAIT_MS, Math.max(MIN_RETRY_WAIT_MS, Math.round(wait)));
}
/**
 * Times a send answered `error internal` (the server could not store it, e.g. its database was
 * restarting) is tried again, 250 ms doubling up to 2 s apart (about 20 s in all), before the
 * send rejects.
 */
export const ERROR_RETRIES = 12;

/** The pause before the `failed`-th resend of a send answered `error internal` (ms): 250 doubling, at most 2,000. */
export function errorRetryDelayMs(failed: number): number {
  return Math.min(250 * 2 ** (failed - 1), 2000);
}

type Handlers = { [K in ServerFrame["type"]]: ((frame: Extract<ServerFrame, { type: K }>) => void)[] } & {
  close: ((code: number, reason: string) => void)[];
};

/**
 * A typed wrapper of one device's WebSocket: sends the protocol's frames, dispatches its events,
 * and pairs each `send` with its `accepted`/`rejected` answer. The frame types are the server's own
 * (src/protocol).
 */
export class ClearBoxSocket {
  private readonly handlers: Handlers = {
    accepted: [],
    rejected: [],
    message: [],
    presence: [],
    error: [],
    pong: [],
    "auth.ok": [],
    close: [],
  };
  /** Sends waiting for their answer, by id; a close rejects them all. */
  private readonly pending = new Map<
    string,
    { resolve: (answer: AcceptedFrame | RejectedFrame | ErrorFrame) => void; reject: (error: Error) => void }
  >();

  private readonly reauth: SocketReauthentication | undefined;

  private constructor(
    private readonly socket: WebSocket,
    tokens?: AccessTokens,
  ) {
    this.reauth = tokens && new SocketReauthentication(tokens, (frame) => this.send(frame)).start();
    socket.addEventListener("message", (event) => this.dispatch(String(event.data)));
    this.on("auth.ok", () => this.reauth?.acknowledged());
    socket.addEventListener("close", (event) => {
      this.reauth?.stop();
      // No answer comes on a closed socket: the caller sends again on its next connection.
      for (const { reject } of this.pending.values())
        reject(new Error(`socket closed (${event.code}) before the answer`));
      this.pending.clear();
      for (const handler of this.handlers.close) handler(event.code, event.reason);
    });
  }

  /**
   * Opens `/v1/ws` on `baseUrl` (wss for an https URL) with the bearer token in the Authorization
   * header; `ca` (PEM) replaces the system's trusted CAs, for a server with a private CA. With
   * `tokens` (the `ClearBoxHttp` the token came from) the socket renews its token in-band before
   * it expires (`auth` frames); without, the server closes it with 4440 when the token expires.
   */
  static connect(
    baseUrl: string,
    accessToken: string,
    ca?: string,
    tokens?: AccessTokens,
  ): Promise<ClearBoxSocket> {
    const url = new URL("/v1/ws", baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url, {
      headers: { authorization: `Bearer ${accessToken}` },
      ...(ca ? { tls: { ca } } : {}),
    });
    return new Promise((resolve, reject) => {
      socket.addEventListener("open", () => resolve(new ClearBoxSocket(socket, tokens)), { once: true });
      socket.addEventListener("error", () => reject(new Error(`cannot open ${url.origin}/v1/ws`)), {
        once: true,
      });
    });
  }

  on<K extends keyof Handlers>(type: K, handler: Handlers[K][number]): () => void {
    const list = this.handlers[type] as Handlers[K][number][];
    list.push(handler);
    return () => void list.splice(list.indexOf(handler), 1);
  }

  send(frame: ClientFrame): void {
    this.socket.send(JSON.stringify(frame));
  }

  /** Sends one 1:1 message (a ciphertext per device) and resolves with the server's answer. */
  sendToUser(
    id: string,
    userId: string,
    messages: OutgoingMessage[],
  ): Promise<AcceptedFrame | RejectedFrame> {
    return this.answered(id, { type: "send", id, to: { user: userId }, messages });
  }

  /** Sends one sender-key ciphertext to a group and resolves with the server's answer. */
  sendToGroup(
    id: string,
    groupId: string,
    message: GroupSend["message"],
  ): Promise<AcceptedFrame | RejectedFrame> {
    return this.answered(id, { type: "send", id, to: { group: groupId }, message });
  }

  /**
   * Tells the server these messages are stored (1-1000), each named as its `message` frame named it:
   * by `id` and `from` (ids are chosen by senders, so two senders' messages may share one).
   */
  ack(messages: readonly Pick<MessageFrame, "id" | "from">[]): void {
    this.send({ type: "ack", messages: messages.map(({ id, from }) => ({ id, from })) });
  }

  watchPresence(users: string[]): void {
    this.send({ type: "presence.watch", users });
  }

  ping(): void {
    this.send({ type: "ping" });
  }

  close(code = 1000): void {
    this.socket.close(code);
  }

  /**
   * Sends and resolves with the answer. A `rejected busy` (the server stored nothing) is sent again
   * with the same id after its `retryAfterMs`, up to BUSY_RETRIES times; then the `busy` is returned.
   * A `rejected rate_limited` (nothing stored) without `retryAfterMs` (the device's frame budget,
   * `DEVICE_RATE_LIMIT`; sent again after 1 s, when the budget has refilled) or with one of at most
   * RATE_LIMIT_WAIT_MS is sent again likewise, up to RATE_LIMIT_RETRIES times; a longer one (the
   * account's daily storage quota) is returned at once, as is the last refusal.
   * An `error internal` naming the send (it was not accepted: a store failed or did not answer in
   * time) is sent again with the same id, up to ERROR_RETRIES times with a growing pause; then the
   * returned promise rejects with the server's message. Re-sending an id never stores it twice.
   * The promise also rejects when the socket closes before the answer.
   */
  private async answered(id: string, frame: ClientFrame): Promise<AcceptedFrame | RejectedFrame> {
    let busy = 0;
    let limited = 0;
    let failed = 0;
    for (;;) {
      const answer = await new Promise<AcceptedFrame | RejectedFrame | ErrorFrame>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        this.send(frame);
      });
      if (answer.type === "error") {
        if (++failed > ERROR_RETRIES) throw new Error(answer.message);
        await new Promise((wake) => setTimeout(wake, errorRetryDelayMs(failed)));
        continue;
      }
      if (answer.type !== "rejected") return answer;
      if (answer.code === "busy" && ++busy < BUSY_RETRIES) {
        await new Promise((wake) => setTimeout(wake, retryWaitMs(answer.retryAfterMs, MIN_RETRY_WAIT_MS)));
        continue;
      }
      const wait = answer.retryAfterMs ?? FRAME_BUDGET_WAIT_MS;
      if (answer.code === "rate_limited" && wait <= RATE_LIMIT_WAIT_MS && ++limited <= RATE_LIMIT_RETRIES) {
        await new Promise((wake) => setTimeout(wake, retryWaitMs(wait, FRAME_BUDGET_WAIT_MS)));
        continue;
      }
      return answer;
    }
  }

  private dispatch(data: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    if (frame.type === "accepted" || frame.type === "rejected" || (frame.type === "error" && frame.id)) {
      const id = frame.id as string;
      this.pending.get(id)?.resolve(frame);
      this.pending.delete(id);
    }
    const list = this.handlers[frame.type] as ((f: ServerFrame) => void)[] | undefined;
    for (const handler of list ?? []) handler(frame);
  }
}
