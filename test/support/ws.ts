import { expect } from "bun:test";
import { randomUUID } from "node:crypto";

/** A server frame as tests look at it. */
export type Frame = Record<string, any> & { type: string };

/**
 * A WebSocket test client: collects every frame, lets a test wait for the next frame matching a
 * predicate, and records how the socket closed.
 */
export class TestSocket {
  readonly frames: Frame[] = [];
  closed: { code: number; reason: string } | undefined;
  private readonly waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void; from: number }[] =
    [];
  private readonly closeWaiters: ((c: { code: number; reason: string }) => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.addEventListener("message", (event) => {
      const frame = JSON.parse(String(event.data)) as Frame;
      this.frames.push(frame);
      for (const waiter of [...this.waiters]) {
        if (waiter.match(frame)) {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          waiter.resolve(frame);
        }
      }
    });
    ws.addEventListener("close", (event) => {
      this.closed = { code: event.code, reason: event.reason };
      for (const w of this.closeWaiters.splice(0)) w(this.closed);
    });
  }

  /** Opens `/v1/ws` with a bearer token; rejects with the HTTP status when the upgrade is refused. */
  static open(
    baseUrl: string,
    token: string | undefined,
    options: { viaQuery?: boolean } = {},
  ): Promise<TestSocket> {
    const url = new URL("/v1/ws", baseUrl.replace(/^http/, "ws"));
    if (token && options.viaQuery) url.searchParams.set("token", token);
    const headers = token && !options.viaQuery ? { authorization: `Bearer ${token}` } : undefined;
    const ws = new WebSocket(url.toString(), headers ? ({ headers } as unknown as string[]) : undefined);
    const socket = new TestSocket(ws);
    return new Promise((resolve, reject) => {
      ws.addEventListener("open", () => resolve(socket), { once: true });
      ws.addEventListener("error", () => reject(new Error("websocket upgrade refused")), { once: true });
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /**
   * The first frame (already received or coming) that matches, within `timeoutMs`. The defaults
   * here bound a wait for something that should come, not how fast it comes: at 5 s a group send's
   * reply missed them on a machine at load 7, so they are generous (a test meaning "nothing comes"
   * passes its own short timeout).
   */
  next(match: (f: Frame) => boolean, timeoutMs = 15_000, what = "a matching frame"): Promise<Frame> {
    const seen = this.frames.find(match);
    if (seen) {
      this.frames.splice(this.frames.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.frames.slice(-5))}`,
          ),
        );
      }, timeoutMs);
      const waiter = {
        match,
        from: this.frames.length,
        resolve: (f: Frame) => {
          clearTimeout(timer);
          this.frames.splice(this.frames.indexOf(f), 1);
          resolve(f);
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** The reply to the send with this id (`accepted` or `rejected`). */
  reply(id: string, timeoutMs = 15_000): Promise<Frame> {
    return this.next(
      (f) => (f.type === "accepted" || f.type === "rejected") && f.id === id,
      timeoutMs,
      `reply to ${id}`,
    );
  }

  /** Waits until `count` message frames have arrived (and takes them), oldest first. */
  async messages(count: number, timeoutMs = 30_000): Promise<Frame[]> {
    const out: Frame[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < count) {
      out.push(
        await this.next(
          (f) => f.type === "message",
          Math.max(1, deadline - Date.now()),
          `message ${out.length + 1} of ${count}`,
        ),
      );
    }
    return out;
  }

  /** Message frames received so far and not yet taken. */
  pendingMessages(): Frame[] {
    return this.frames.filter((f) => f.type === "message");
  }

  /** Resolves with the close code and reason. */
  whenClosed(timeoutMs = 15_000): Promise<{ code: number; reason: string }> {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("socket did not close")), timeoutMs);
      this.closeWaiters.push((c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close(1000, "done");
    return this.whenClosed();
  }
}

/** An `ack` frame for these received `message` frames: each named by its `id` and `from` (docs/PROTOCOL.md). */
export function ackOf(messages: readonly Frame[]): Frame {
  return { type: "ack", messages: messages.map((m) => ({ id: m.id, from: m.from })) };
}

/** An `ack` frame for messages with these ids, all sent by one device (`user`, `device`). */
export function ackFrom(from: { user: string; device: number }, ids: readonly string[]): Frame {
  return { type: "ack", messages: ids.map((id) => ({ id, from })) };
}

/**
 * Sends `count` 1:1 messages from `from` to user `to`'s device 1 (type 3, bodies "`label` 0", "`label`
 * 1", … in base64), then waits for each one's `accepted` (15 s each; a `rejected` fails the test).
 * Returns their ids in send order.
 */
export async function sendDirect(
  from: TestSocket,
  to: string,
  count: number,
  label: string,
): Promise<string[]> {
  const ids = Array.from({ length: count }, () => randomUUID());
  for (const [i, id] of ids.entries())
    from.send({
      type: "send",
      id,
      to: { user: to },
      messages: [{ deviceId: 1, type: 3, body: Buffer.from(`${label} ${i}`).toString("base64") }],
    });
  for (const id of ids) expect(await from.reply(id, 15_000)).toMatchObject({ type: "accepted" });
  return ids;
}

/**
 * Sends `count` messages of `body` (base64) to one device of `to`, one at a time, each answered
 * `accepted` before the next goes (an offline backlog for the drain tests); returns their ids in order.
 */
export async function queueBacklog(
  from: TestSocket,
  to: { userId: string; deviceId: number },
  count: number,
  body: string,
): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const id = randomUUID();
    from.send({
      type: "send",
      id,
      to: { user: to.userId },
      messages: [{ deviceId: to.deviceId, type: 2, body }],
    });
    expect((await from.reply(id)).type).toBe("accepted");
    ids.push(id);
  }
  return ids;
}

/**
 * Acks every message frame `socket` gets, as it comes, and collects their ids in arrival order
 * until `count` distinct ones came or `timeoutMs` passed (a redelivery is kept, for the caller's
 * assertion to show).
 */
export async function receiveAcking(
  socket: TestSocket,
  count: number,
  timeoutMs = 30_000,
): Promise<string[]> {
  const received: string[] = [];
  socket.ws.addEventListener("message", (event) => {
    const frame = JSON.parse(String(event.data)) as Frame;
    if (frame.type !== "message") return;
    received.push(frame.id);
    socket.send(ackOf([frame]));
  });
  const deadline = Date.now() + timeoutMs;
  while (new Set(received).size < count && Date.now() < deadline) await Bun.sleep(20);
  return received;
}

/**
 * Polls `condition` every 20 ms until it holds; throws after `timeoutMs` with "timed out waiting
 * for `what`" (`what` may be a function, read at that moment, to say where things stand).
 */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  what: string | (() => string),
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
    await Bun.sleep(20);
  }
}

/**
 * How a test says "nothing more came" soundly: sends one 1:1 message from `from` to user `to`, an
 * envelope for each of `sockets` (the recipient's devices 1, 2, … in that order), waits until each
 * socket receives it (30 s) and acks it there. Returns, per socket, the message frames that came
 * before it and were not yet taken. A device gets what its user actor pushes in the order the actor
 * handles it, and a connecting device its offline queue before any live message, so a duplicate or
 * redelivery the test rules out would have arrived before this later message; a fixed pause proves
 * nothing on a loaded machine.
 */
export async function messagesBeforeMarker(
  from: TestSocket,
  to: string,
  sockets: readonly TestSocket[],
): Promise<Frame[][]> {
  const id = randomUUID();
  from.send({
    type: "send",
    id,
    to: { user: to },
    messages: sockets.map((_, i) => ({
      deviceId: i + 1,
      type: 3,
      body: Buffer.from("marker").toString("base64"),
    })),
  });
  expect(await from.reply(id)).toMatchObject({ type: "accepted" });
  return Promise.all(
    sockets.map(async (socket) => {
      const before: Frame[] = [];
      const deadline = Date.now() + 30_000;
      for (;;) {
        const [m] = (await socket.messages(1, Math.max(1, deadline - Date.now()))) as [Frame];
        if (m.id === id) {
          socket.send(ackOf([m]));
          return before;
        }
        before.push(m);
      }
    }),
  );
}

/**
 * What `request` ended in within 60 s, or "hung" (no answer at all): for fault tests, where a
 * request that never answers is the fault and must be reported as such, not as a test timeout.
 */
export function answered<T>(request: Promise<T>): Promise<T | "hung"> {
  return Promise.race([request, Bun.sleep(60_000).then(() => "hung" as const)]);
}

/** Sends one 1:1 message to `to`'s device 1; resolves with its answer frame's type (accepted, rejected or error), or "hung". */
export async function sendAnswer(socket: TestSocket, to: string, text: string): Promise<string> {
  const id = randomUUID();
  socket.send({
    type: "send",
    id,
    to: { user: to },
    messages: [{ deviceId: 1, type: 3, body: Buffer.from(text).toString("base64") }],
  });
  const frame = await answered(socket.next((f) => f.id === id && f.type !== "message", 60_000));
  return frame === "hung" ? frame : frame.type;
}
