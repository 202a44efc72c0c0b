import { ERROR_RETRIES, errorRetryDelayMs } from "../client/socket.ts";
import { stamp } from "../observability/stage-trace.ts";
import type { ServerFrame } from "../protocol/index.ts";
import type { Target, VirtualDevice } from "./targets.ts";
import type { Tracker } from "./tracker.ts";

/** Acks gathered before one `ack` frame goes out (the protocol allows 1000). */
const ACK_BATCH = 500;
/** How long an upgrade may take (`LOADTEST_OPEN_TIMEOUT_MS`; a loaded node drained by thousands of devices needs longer). */
const OPEN_TIMEOUT_MS = Number(process.env.LOADTEST_OPEN_TIMEOUT_MS) || 15_000;

type MessageFrame = Extract<ServerFrame, { type: "message" }>;

/**
 * One virtual device's WebSocket: reports accepted/rejected/delivered to the current phase's
 * tracker, dedupes deliveries by id (counting duplicates), and acks what it received in batches.
 */
export class LoadSocket {
  private current: Tracker | undefined;
  /** Sends not yet answered on this socket (the flat-out window). */
  inFlight = 0;
  /** Called after each answer to a send, so a flat-out sender can send the next one. */
  onAnswer: (() => void) | undefined;
  /** Decrypts and checks a delivery when the run uses real Signal sessions. */
  verify: ((frame: MessageFrame) => Promise<boolean>) | undefined;
  closed = false;
  /** The close code and reason the server gave, when it closed the socket. */
  closedWith: string | undefined;
  private readonly seen = new Set<string>();
  /** Send frames not answered yet, by id: a `busy` answer is sent again after its retryAfterMs. */
  private readonly unanswered = new Map<string, string>();
  /** `error internal` answers so far, by id of a send not answered otherwise yet. */
  private readonly failures = new Map<string, number>();
  private acks: { id: string; from: { user: string; device: number } }[] = [];
  private ackTimer: ReturnType<typeof setTimeout> | undefined;

  private constructor(
    readonly device: VirtualDevice,
    private readonly ws: WebSocket,
  ) {
    ws.addEventListener("message", (event) => this.receive(String(event.data)));
    ws.addEventListener("close", (event) => {
      this.closed = true;
      this.closedWith = `${event.code}${event.reason ? ` ${event.reason}` : ""}`;
    });
  }

  /** How long received ids gather before one `ack` frame carries them (`--ack-delay`). */
  static ackDelayMs = 5;

  /** Opens the device's socket; rejects when the upgrade is refused or takes too long. */
  static open(target: Target, device: VirtualDevice, tracker?: Tracker): Promise<LoadSocket> {
    const { url, headers } = target.socket(device);
    const ws = new WebSocket(url, headers ? ({ headers } as unknown as string[]) : undefined);
    const socket = new LoadSocket(device, ws);
    socket.tracker = tracker;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(
          new Error(`socket for ${device.userId}.${device.deviceId} did not open in ${OPEN_TIMEOUT_MS} ms`),
        );
      }, OPEN_TIMEOUT_MS);
      ws.addEventListener(
        "open",
        () => {
          clearTimeout(timer);
          resolve(socket);
        },
        { once: true },
      );
      ws.addEventListener(
        "error",
        () => {
          clearTimeout(timer);
          reject(new Error(`socket for ${device.userId}.${device.deviceId} refused`));
        },
        { once: true },
      );
    });
  }

  /** The phase this socket reports to; a new phase starts a fresh dedupe set (ids never repeat across phases). */
  get tracker(): Tracker | undefined {
    return this.current;
  }

  set tracker(next: Tracker | undefined) {
    if (next !== this.current) this.seen.clear();
    this.current = next;
  }

  /** Sends a `send` frame already serialised; the caller told the tracker (and may have taken the window slot). */
  send(text: string, slotTaken = false): void {
    if (!slotTaken) this.inFlight++;
    const id = /"id":"([^"]+)"/.exec(text)?.[1];
    if (id) this.unanswered.set(id, text);
    if (id) stamp(id, "sent");
    this.ws.send(text);
  }

  /** Ids this device has received (deduped). */
  get received(): number {
    return this.seen.size;
  }

  private receive(text: string) {
    const frame = JSON.parse(text) as ServerFrame;
    const tracker = this.current;
    switch (frame.type) {
      case "accepted":
        this.unanswered.delete(frame.id);
        this.failures.delete(frame.id);
        this.inFlight--;
        tracker?.acceptedOne(frame.id);
        stamp(frame.id, "hacc");
        this.onAnswer?.();
        break;
      case "rejected": {
        const text = this.unanswered.get(frame.id);
        // Busy: nothing was stored; the same frame goes again later and keeps its window slot
        // and its send time (the wait counts in its latency).
        if (frame.code === "busy" && text !== undefined && !this.closed) {
          tracker?.busyOne();
          setTimeout(() => {
            if (!this.closed) this.ws.send(text);
          }, frame.retryAfterMs ?? 25);
          break;
        }
        this.unanswered.delete(frame.id);
        this.failures.delete(frame.id);
        this.inFlight--;
        tracker?.rejectedOne(frame.id, frame.code);
        this.onAnswer?.();
        break;
      }
      case "message": {
        const { id } = frame;
        stamp(id, "dlv");
        this.ack({ id, from: frame.from });
        if (this.seen.has(id)) {
          tracker?.duplicateOne();
          return;
        }
        this.seen.add(id);
        if (tracker?.deliveredOne(id) && this.verify) {
          void this.verify(frame).then((ok) => {
            if (!ok) tracker.corrupted++;
          });
        }
        break;
      }
      case "error": {
        tracker?.errorOne();
        if (frame.code !== "internal") break;
        // An `internal` error names a send that was not accepted (a store failed or did not answer
        // in time): with the SDK's retry policy (ERROR_RETRIES, errorRetryDelayMs) it goes again with
        // the same id, keeping its window slot and send time; after that it counts as answered, not lost.
        const text = frame.id === undefined ? undefined : this.unanswered.get(frame.id);
        const failed = frame.id === undefined ? 0 : (this.failures.get(frame.id) ?? 0) + 1;
        if (frame.id !== undefined && text !== undefined && failed <= ERROR_RETRIES && !this.closed) {
          this.failures.set(frame.id, failed);
          setTimeout(() => {
            if (!this.closed) this.ws.send(text);
          }, errorRetryDelayMs(failed));
          break;
        }
        if (frame.id !== undefined) {
          this.unanswered.delete(frame.id);
          this.failures.delete(frame.id);
        }
        this.inFlight--;
        this.onAnswer?.();
        break;
      }
    }
  }

  private ack(message: { id: string; from: { user: string; device: number } }) {
    this.acks.push(message);
    if (this.acks.length >= ACK_BATCH) this.flushAcks();
    else this.ackTimer ??= setTimeout(() => this.flushAcks(), LoadSocket.ackDelayMs);
  }

  private flushAcks() {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (this.acks.length === 0 || this.closed) return;
    this.ws.send(JSON.stringify({ type: "ack", messages: this.acks }));
    this.acks = [];
  }

  /** Flushes pending acks and closes; resolves when the socket is closed. */
  close(): Promise<void> {
    this.flushAcks();
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 3000);
      this.ws.addEventListener(
        "close",
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
      this.ws.close(1000, "done");
    });
  }
}
