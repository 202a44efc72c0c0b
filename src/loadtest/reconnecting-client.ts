import ReconnectingWebSocket from "partysocket/ws";
import { CloseCode, type ServerFrame } from "../protocol/index.ts";
import type { Target, VirtualDevice } from "./targets.ts";

/** Close codes after which reconnecting makes no sense (signed out, removed, replaced, erased). */
const FINAL_CLOSE_CODES = new Set<number>([
  CloseCode.revoked,
  CloseCode.deviceRemoved,
  CloseCode.replaced,
  CloseCode.erased,
]);

/**
 * How long a send may stay unanswered on an open socket before it is sent again with the same id.
 * The server answers every send within 10 s (docs/PROTOCOL.md); a little more covers a loaded host.
 */
const RESEND_AFTER_MS = 15_000;
/** Pause before re-sending a send answered with a retryable `error internal` (the server gives no hint). */
const RETRY_AFTER_ERROR_MS = 250;

interface Unanswered {
  text: string;
  /** When this id was last written to a socket (performance.now()). */
  lastSentAt: number;
}

/** What a reconnecting client reports to its run; every callback gets performance.now() as `at`. */
export interface ClientEvents {
  accepted(id: string, at: number): void;
  rejected(id: string, code: string): void;
  /** The first copy of message `id` from user `from`; repeats count in `duplicates`, not here. */
  delivered(id: string, from: string, at: number): void;
}

/**
 * A virtual device that behaves like a real client on an unreliable connection (as the SDK's
 * Messenger does): its WebSocket is reopened after any drop or server close with exponential
 * backoff and jitter (partysocket's ReconnectingWebSocket), and every send not answered yet is sent
 * again with the same id after a reconnect, after a retryable answer (`rejected busy`,
 * `error internal`) or after RESEND_AFTER_MS without an answer; the server delivers an id once
 * (docs/PROTOCOL.md), so resending is safe. Sends wait in an outbox while the socket is down, and
 * `window` of them are in flight at once (default 1). Deliveries are deduped by id, strictly: every copy after
 * the first counts in `duplicates`, whether it came on the same socket or after a reconnect. Every
 * delivery is acked at once.
 */
export class ReconnectingClient {
  /** Times the socket opened again after the first open. */
  reconnects = 0;
  /** Copies of a message this device had already received. */
  duplicates = 0;
  /** Sends written again with the same id (after a reconnect, a retryable answer or a timeout). */
  resends = 0;
  /** `error internal` answers to sends (retried). */
  retryableErrors = 0;
  /** `rejected busy` answers (retried after retryAfterMs). */
  busy = 0;
  /** The last close code and reason the server or network gave, if any. */
  lastClose: string | undefined;
  private opened = 0;
  private stopped = false;
  private readonly ws: ReconnectingWebSocket;
  /** Sends written and waiting for a final answer (at most `window`). */
  private readonly unanswered = new Map<string, Unanswered>();
  /** Sends not written yet, in order: the client's outbox. */
  private readonly outbox: { id: string; text: string }[] = [];
  private readonly seen = new Set<string>();
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(
    readonly device: VirtualDevice,
    target: Target,
    private readonly events: ClientEvents,
    /**
     * Sends in flight at once. 1 (the default) sends the next message only after the previous one
     * got its final answer, as the SDK's outbox does: acceptance order is then the order of sending,
     * and "out of order" means the server reordered. More than 1 pipelines sends; a retried send
     * may then be accepted after a later one, so order is only meaningful per acceptance.
     */
    private readonly window = 1,
  ) {
    const { url, headers } = target.socket(device);
    // Bun's WebSocket takes headers as a second argument: the token goes in Authorization.
    class AuthorizedWebSocket extends WebSocket {
      constructor(address: string | URL) {
        super(address, (headers ? { headers } : undefined) as unknown as string[]);
      }
    }
    this.ws = new ReconnectingWebSocket(url, undefined, {
      WebSocket: AuthorizedWebSocket,
      // Read at every attempt: a getter draws new jitter each time (as the SDK's Messenger does).
      get minReconnectionDelay() {
        return 250 + Math.random() * 500;
      },
      reconnectionDelayGrowFactor: 1.5,
      maxReconnectionDelay: 5_000,
      connectionTimeout: 10_000,
      minUptime: 2_000,
      maxRetries: Number.POSITIVE_INFINITY,
      maxEnqueuedMessages: 0,
      shouldReconnectOnClose: (event) => !FINAL_CLOSE_CODES.has(event.code),
    });
    this.ws.addEventListener("open", () => {
      if (this.opened++ > 0) this.reconnects++;
      // Whatever was written to the old socket and not answered may never have arrived.
      for (const [id, send] of this.unanswered) this.write(id, send, true);
      this.pump();
    });
    this.ws.addEventListener("close", (event) => {
      this.lastClose = `${event.code}${event.reason ? ` ${event.reason}` : ""}`;
    });
    this.ws.addEventListener("message", (event) => this.receive(String(event.data)));
    this.timer = setInterval(() => this.resendStale(), 1000);
  }

  /** Resolves once the socket is open (the first time); rejects after `timeoutMs`. */
  ready(timeoutMs = 15_000): Promise<void> {
    if (this.isOpen) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`socket for ${this.device.userId} did not open in ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.ws.addEventListener(
        "open",
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends not answered with `accepted` or a final `rejected` yet (in flight or in the outbox). */
  get pending(): number {
    return this.unanswered.size + this.outbox.length;
  }

  /**
   * Queues a serialised `send` frame with message id `id`; it is written once the socket is open
   * and fewer than `window` sends are in flight.
   */
  send(id: string, text: string): void {
    this.outbox.push({ id, text });
    this.pump();
  }

  /** Writes queued sends while the socket is open and the window has room. */
  private pump() {
    while (this.isOpen && !this.stopped && this.unanswered.size < this.window && this.outbox.length > 0) {
      const { id, text } = this.outbox.shift() as { id: string; text: string };
      const send: Unanswered = { text, lastSentAt: Number.NEGATIVE_INFINITY };
      this.unanswered.set(id, send);
      this.write(id, send, false);
    }
  }

  private write(_id: string, send: Unanswered, again: boolean) {
    if (again) this.resends++;
    send.lastSentAt = performance.now();
    this.ws.send(send.text);
  }

  private resendStale() {
    if (!this.isOpen) return;
    const now = performance.now();
    for (const [id, send] of this.unanswered) {
      if (now - send.lastSentAt > RESEND_AFTER_MS) this.write(id, send, true);
    }
  }

  private retryLater(id: string, delayMs: number) {
    setTimeout(() => {
      const send = this.unanswered.get(id);
      if (send && this.isOpen && !this.stopped) this.write(id, send, true);
    }, delayMs);
  }

  private receive(text: string) {
    const frame = JSON.parse(text) as ServerFrame;
    const now = performance.now();
    switch (frame.type) {
      case "accepted":
        if (this.unanswered.delete(frame.id)) {
          this.events.accepted(frame.id, now);
          this.pump();
        }
        break;
      case "rejected":
        if (frame.code === "busy") {
          this.busy++;
          this.retryLater(frame.id, frame.retryAfterMs ?? 25);
        } else if (this.unanswered.delete(frame.id)) {
          this.events.rejected(frame.id, frame.code);
          this.pump();
        }
        break;
      case "error":
        if (frame.id && this.unanswered.has(frame.id)) {
          this.retryableErrors++;
          this.retryLater(frame.id, RETRY_AFTER_ERROR_MS);
        }
        break;
      case "message":
        this.ws.send(JSON.stringify({ type: "ack", messages: [{ id: frame.id, from: frame.from }] }));
        if (this.seen.has(frame.id)) this.duplicates++;
        else {
          this.seen.add(frame.id);
          this.events.delivered(frame.id, frame.from.user, now);
        }
        break;
    }
  }

  /** Closes the socket for good (no reconnect) and stops resending. */
  close(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.ws.close(1000, "done");
  }
}
