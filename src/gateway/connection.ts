import type { ServerWebSocket } from "bun";
import type { StoredEnvelope } from "../messaging/envelope.ts";
import type { QueueDrain } from "../messaging/offline-queue.ts";
import type { DeviceSocketRef } from "../messaging/presence.ts";
import type { DeliveryPath, MessageTallies } from "../observability/metrics.ts";
import { CloseCode, messageFrameText, type ServerFrame } from "../protocol/index.ts";
import type { Principal } from "../sessions/service.ts";
import type { TokenBucket } from "./token-bucket.ts";

/**
 * What the gateway keeps on a Bun socket (`ws.data`), set at the upgrade: who it is, the device's
 * token generation its access token names, and when that token expires (Unix ms).
 */
export interface SocketData {
  principal: Principal;
  generation: number;
  expiresAt: number;
}

/** A settled promise shared by every connection's chains until they have work (one less object per socket). */
const SETTLED: Promise<void> = Promise.resolve();

/** Closes a connection whose access token expired (one function for all: no closure per socket). */
function expire(conn: DeviceConnection): void {
  conn.close(CloseCode.tokenExpired, "access token expired: refresh it and reconnect");
}

/**
 * Bytes a drain of the offline queue lets wait in a socket's send buffer (Bun's, past what the
 * kernel took) before it waits for the socket's `drain` event, and about the most one corked write
 * of it adds: a reader slower than the server (a phone on a slow link) is fed at its pace, well
 * under the gateway's `backpressureLimit` (4 MiB), which closes a socket that passes it. A drain
 * that wrote its 256 envelopes at once (up to 64 MiB of 256 KiB ones) had such a reader closed
 * after its first 4 MiB, on every reconnect (test/gateway/slow-reader-drain.test.ts).
 */
export const DRAIN_HIGH_WATER_BYTES = 1024 * 1024;

/** The Bun socket type the gateway serves. */
export type DeviceSocket = ServerWebSocket<SocketData>;

/** One device's socket on this node. */
export class DeviceConnection {
  /** `draining`: the offline queue is being delivered, live envelopes wait in the user actor. */
  state: "opening" | "draining" | "live" | "closed" = "opening";
  /**
   * What the socket does in order: coming online and its drains of the offline queue, a gone node's
   * disconnects told (`Gateway.nodesGone`), a re-assertion of its presence. Sends have their own
   * (`sendChain`).
   */
  chain: Promise<void> = SETTLED;
  drain: QueueDrain | undefined;
  /** The user actor was told this connection's drain emptied the offline queue (told once). */
  private emptiedTold = false;
  /**
   * Acks on their way to the log and the user actor; the disconnect waits for them. Like the watch
   * sets, made on first use and dropped when empty: most sockets sit idle, and an empty Set per
   * socket is memory for nothing.
   */
  acking: Set<Promise<void>> | undefined;
  /** The users this socket's `presence.watch` list names (PresenceWatchers sets it; none: no list). */
  watching: Set<string> | undefined;
  /** Of `watching`, those the device's user may see (PresenceAudience); only these hear changes. */
  seeing: Set<string> | undefined;
  /** Bumped by every new watch list: an older list's late answer is not applied. */
  watchGeneration = 0;
  /** Pinged by the gateway's schedule and no pong since: the next tick closes the socket. */
  awaitingPong = false;
  /**
   * Set by `close`: the server has closed (or is closing) this socket, e.g. on a revocation. Frames
   * arriving meanwhile are dropped, and sends not yet submitted are never accepted.
   */
  closing = false;
  /**
   * Sockets of the same device on other nodes whose leases this one found when it came online (the
   * ones it replaced, or found gone): should such a node go away without their disconnect, this
   * socket reads the offline queue again (`Gateway.nodesGone`), and forgets them once that node is
   * forgotten. Made only when there are some (a device moving between nodes); an idle socket keeps
   * none.
   */
  previousSockets: DeviceSocketRef[] | undefined;
  /** `auth` frames are answered one after another, in arrival order. */
  authChain: Promise<void> = SETTLED;
  /**
   * The device's sends, checked and queued for commit one after another (so accepted in the order
   * sent), apart from `chain`: the paced drain of the offline queue runs on `chain` for as long as
   * the reader takes to read its backlog (minutes on a slow link), and sends queued behind it were
   * answered only after the whole backlog, or refused once past SEND_DEADLINE_MS
   * (test/gateway/send-during-drain.test.ts). Use `enqueueSend`.
   */
  sendChain: Promise<void> = SETTLED;
  private expiry: ReturnType<typeof setTimeout> | undefined;
  private frameBucket: TokenBucket | undefined;
  /** A paced delivery waiting for Bun's `drain` event (or the close), if one is. */
  private writableWaiter: (() => void) | undefined;
  /** Bun's `drain` events (and the close) seen: the reader took something from the socket's buffer. */
  private wakes = 0;
  /** `wakes` at the last ping round that found a paced delivery waiting; -1 when none was. */
  private wakesAtLastLook = -1;

  constructor(
    readonly ws: DeviceSocket,
    readonly principal: Principal,
    /**
     * Makes the socket's token bucket (frames a second, and a burst). Called at the first frame,
     * not at the open: a bucket starts full and never holds more than its burst, so one made later
     * takes exactly what one made at the open would, and an idle socket keeps none.
     */
    private readonly newBucket: () => TokenBucket,
    /** Unique per socket, so a late close of a replaced socket is not taken for the new one's. */
    readonly connectionId: string,
    /** The node's messaging counts: deliveries and their latency are tallied here. */
    private readonly tallies: MessageTallies,
  ) {}

  /**
   * Acks of this socket whose writes (log and queue) have not finished. The queue may be reported
   * emptied only when none is left: the drain counts an ack as done when it was sent to the broker,
   * the user actor checks the log, and an ack still committing there would make it keep the queue
   * with nobody to ask again.
   */
  acksInFlight = 0;

  /**
   * True the first time the drain has emptied the device's offline queue and no ack of it is still
   * being written: tell the user actor then (the last ack to finish, or the drain's end, does).
   */
  takeEmptiedQueue(): boolean {
    if (this.emptiedTold || this.acksInFlight > 0 || !this.drain?.emptied) return false;
    this.emptiedTold = true;
    return true;
  }

  /**
   * Reads the offline queue again with the drain this socket holds (the user actor asked: envelopes
   * went back to the queue after the drain had read it, or the drain is a new one in place of one
   * that took nothing and was released); the emptied queue may be reported again.
   */
  rewindDrain(): void {
    this.drain?.rewind();
    this.emptiedTold = false;
  }

  /**
   * Takes the drain off this connection when it is of no further use: it took nothing from the
   * queue (`tookAny` false: the usual connect of a device without a backlog, so there is nothing
   * to ack, drop or give back) and owes no report of an emptied queue (none to make, or made).
   * Returns it for the caller to release; an idle socket then keeps no drain (its closures, map
   * and queue name). Undefined when the drain stays.
   */
  takeUnusedDrain(tookAny: boolean): QueueDrain | undefined {
    const drain = this.drain;
    if (!drain || tookAny || (drain.emptied && !this.emptiedTold)) return undefined;
    this.drain = undefined;
    return drain;
  }

  /**
   * Runs `step` on the chain (after what is on it); once the chain is idle again it is the shared
   * settled promise, so an idle socket keeps no promise of its own. Returns the step's promise.
   */
  enqueue(step: () => Promise<void>): Promise<void> {
    const next = this.chain.then(step);
    this.chain = next;
    void next.then(
      () => this.idle(next),
      () => this.idle(next),
    );
    return next;
  }

  /**
   * Runs `step` on the send chain (after the device's earlier sends); once that chain is idle again
   * it is the shared settled promise. `step` must not reject.
   */
  enqueueSend(step: () => Promise<void>): void {
    const next = this.sendChain.then(step);
    this.sendChain = next;
    void next.then(() => {
      if (this.sendChain === next) this.sendChain = SETTLED;
    });
  }

  private idle(step: Promise<void>): void {
    if (this.chain === step) this.chain = SETTLED;
  }

  /** The socket's token bucket: frames it may send (made at first use, see `newBucket`). */
  get bucket(): TokenBucket {
    this.frameBucket ??= this.newBucket();
    return this.frameBucket;
  }

  /** A method, not a field test: the state changes across awaits (the socket may close meanwhile). */
  isClosed(): boolean {
    return this.state === "closed";
  }

  get key(): string {
    return `${this.principal.userId}.${this.principal.deviceId}`;
  }

  /** Sends one server frame; false when the socket is closed. */
  send(frame: ServerFrame): boolean {
    if (this.state === "closed") return false;
    return this.ws.send(JSON.stringify(frame)) !== 0;
  }

  /**
   * Delivers envelopes, oldest first, in one corked write; `path` says whether they were pushed live
   * or read from the offline queue (metrics: delivered count and acceptance → push latency).
   */
  deliver(envelopes: readonly StoredEnvelope[], path: DeliveryPath): boolean {
    if (this.state === "closed") return false;
    let ok = true;
    this.ws.cork(() => {
      for (const envelope of envelopes) ok = this.ws.send(messageFrameText(envelope)) !== 0 && ok;
    });
    const now = Date.now();
    for (const envelope of envelopes) this.tallies.delivered(path, envelope.ts, now);
    return ok;
  }

  /**
   * Delivers envelopes read from the offline queue, oldest first, at the reader's pace: corked
   * writes of at most about DRAIN_HIGH_WATER_BYTES each, and before each one a wait until Bun's send
   * buffer for the socket holds no more than that (`writable`). Resolves once every envelope was
   * written, or when the socket closes (the rest were not: the drain gives what it took and the
   * device did not ack back to the queue).
   */
  async deliverPaced(envelopes: readonly StoredEnvelope[], path: DeliveryPath): Promise<void> {
    let next = 0;
    while (next < envelopes.length) {
      await this.writable();
      if (this.state === "closed") return;
      const first = next;
      this.ws.cork(() => {
        let bytes = 0;
        while (next < envelopes.length && bytes < DRAIN_HIGH_WATER_BYTES) {
          const text = messageFrameText(envelopes[next] as StoredEnvelope);
          bytes += text.length;
          this.ws.send(text);
          next++;
        }
      });
      const now = Date.now();
      for (let i = first; i < next; i++)
        this.tallies.delivered(path, (envelopes[i] as StoredEnvelope).ts, now);
    }
  }

  /** Resolves once the socket's send buffer holds at most DRAIN_HIGH_WATER_BYTES, or it closed. */
  private async writable(): Promise<void> {
    while (this.state !== "closed" && this.ws.getBufferedAmount() > DRAIN_HIGH_WATER_BYTES) {
      await new Promise<void>((resolve) => {
        this.writableWaiter = resolve;
      });
    }
  }

  /**
   * Bun's `drain` event (the socket took some of its buffer) or the close: a paced delivery waiting
   * for room looks again.
   */
  wake(): void {
    this.wakes++;
    const waiter = this.writableWaiter;
    this.writableWaiter = undefined;
    waiter?.();
  }

  /**
   * Called once per ping round (`Gateway.pingAll`): true when a paced delivery has been waiting for
   * room since the previous round and the reader took nothing from the socket's buffer in between
   * (no `drain` event). A pong proves nothing then: the ping sent after the backlog is still in the
   * buffer, unread, and RFC 6455 lets a peer send pongs unasked. Such a socket would hold its
   * drain's batch (up to 256 envelopes in the node's memory, unacked at the broker) for as long as
   * it kept sending pongs and renewing its token (test/gateway/stalled-drain.test.ts).
   */
  stalledSinceLastLook(): boolean {
    if (!this.writableWaiter || this.state === "closed") {
      this.wakesAtLastLook = -1;
      return false;
    }
    const stalled = this.wakesAtLastLook === this.wakes;
    this.wakesAtLastLook = this.wakes;
    return stalled;
  }

  /**
   * The socket's access token expires at `expiresAt` (Unix ms): then the socket is closed with 4440
   * (`CloseCode.tokenExpired`) unless another call (an `auth` frame's token) moved the expiry first.
   */
  expireAt(expiresAt: number): void {
    clearTimeout(this.expiry);
    this.ws.data.expiresAt = expiresAt;
    this.expiry = setTimeout(expire, Math.max(0, expiresAt - Date.now()), this);
  }

  /** Forgets the expiry timer (the socket closed). */
  stopExpiry(): void {
    clearTimeout(this.expiry);
    this.expiry = undefined;
  }

  /** Closes the socket with `code`; from now on its frames are ignored. */
  close(code: number, reason: string): void {
    if (this.state === "closed") return;
    this.closing = true;
    this.ws.close(code, reason);
  }
}
