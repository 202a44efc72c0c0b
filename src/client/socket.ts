import type {
  AcceptedFrame,
  ClientFrame,
  GroupSend,
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

/** Times a send answered `busy` is tried again before the SDK hands the `busy` to the caller. */
const BUSY_RETRIES = 40;

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
  private readonly pending = new Map<string, (answer: AcceptedFrame | RejectedFrame) => void>();

  private readonly reauth: SocketReauthentication | undefined;

  private constructor(
    private readonly socket: WebSocket,
    tokens?: AccessTokens,
  ) {
    this.reauth = tokens && new SocketReauthentication(tokens, (frame) => this.send(frame)).start();
    socket.addEventListener("message", (event) => this.dispatch(String(event.data)));
    socket.addEventListener("close", (event) => {
      this.reauth?.stop();
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

  ack(ids: string[]): void {
    this.send({ type: "ack", ids });
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
   */
  private async answered(id: string, frame: ClientFrame): Promise<AcceptedFrame | RejectedFrame> {
    for (let attempt = 1; ; attempt++) {
      const answer = await new Promise<AcceptedFrame | RejectedFrame>((resolve) => {
        this.pending.set(id, resolve);
        this.send(frame);
      });
      if (answer.type !== "rejected" || answer.code !== "busy" || attempt >= BUSY_RETRIES) return answer;
      await new Promise((wake) => setTimeout(wake, answer.retryAfterMs ?? 25));
    }
  }

  private dispatch(data: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    if (frame.type === "accepted" || frame.type === "rejected") {
      this.pending.get(frame.id)?.(frame);
      this.pending.delete(frame.id);
    }
    const list = this.handlers[frame.type] as ((f: ServerFrame) => void)[] | undefined;
    for (const handler of list ?? []) handler(frame);
  }
}
