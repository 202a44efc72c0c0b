import { type Deadline, type EnvelopeRef, FixedDeadlines } from "../../actors/index.ts";
import type { MessagingService, SubmittedSend } from "../messaging/service.ts";
import { LogSummary } from "../observability/log-summary.ts";
import type { Logger } from "../observability/logger.ts";
import type { MessageTallies } from "../observability/metrics.ts";
import { stamp } from "../observability/stage-trace.ts";
import {
  checkAck,
  checkAuth,
  checkDirectSend,
  checkGroupSend,
  checkPing,
  checkPresenceWatch,
  decodeCheckedAck,
  decodeCheckedDirectSend,
  firstProblem,
  MAX_FRAME_BYTES,
  readJson,
  type ServerFrame,
} from "../protocol/index.ts";
import type { SessionService } from "../sessions/service.ts";
import type { DeviceConnection } from "./connection.ts";
import type { PresenceWatchers } from "./presence-watch.ts";

/** Users a `presence.watch` may name per token of the device's bucket. */
const WATCHED_USERS_PER_TOKEN = 100;

/**
 * A frame's length (UTF-16 code units of a text frame, bytes of a binary one) per token it takes
 * beyond its first: reading a frame costs time in proportion to its length, so a 256 KiB frame takes
 * 17 tokens and a ping one (docs/PROTOCOL.md).
 */
export const FRAME_LENGTH_PER_TOKEN = 16 * 1024;

/**
 * Tokens a frame takes from the device's bucket before anything reads it: one, and one more per
 * FRAME_LENGTH_PER_TOKEN of its length; never more than the bucket's `burst`, so any frame within
 * the size limit can pass on a rested socket however small DEVICE_RATE_LIMIT is.
 */
function lengthCost(message: string | Buffer, burst: number): number {
  return Math.min(burst, 1 + Math.floor(message.length / FRAME_LENGTH_PER_TOKEN));
}

/**
 * Tokens a parsed frame costs in all: one, and a `presence.watch` one more per 100 users it names,
 * since each named user costs a presence read (docs/PROTOCOL.md). What its length already took
 * counts towards it.
 */
function frameCost(frame: unknown): number {
  const users = (frame as { type?: unknown; users?: unknown } | null)?.users;
  if ((frame as { type?: unknown } | null)?.type !== "presence.watch" || !Array.isArray(users)) return 1;
  return 1 + Math.floor(users.length / WATCHED_USERS_PER_TOKEN);
}

/**
 * The id of a frame refused before it was read, when its first characters say it is a send (the
 * SDK writes `{"type":"send","id":"<uuid>",…}`): a refused send is answered `rejected rate_limited`
 * with its id, so the sender can retry it. Looks at a bounded prefix only, so it costs the same for
 * any frame; a frame that only looks like a send is answered as one, which changes nothing.
 */
const SEND_PREFIX =
  /^\s*\{\s*(?:"type"\s*:\s*"send"\s*,\s*"id"\s*:\s*"([0-9A-Fa-f-]{36})"|"id"\s*:\s*"([0-9A-Fa-f-]{36})"\s*,\s*"type"\s*:\s*"send")/;
function peekSendId(message: string | Buffer): string | undefined {
  if (typeof message !== "string") return undefined;
  const match = SEND_PREFIX.exec(message.length > 160 ? message.slice(0, 160) : message);
  return match ? (match[1] ?? match[2]) : undefined;
}

/**
 * How long a send may wait for its answer before the sender hears `error internal` with its id
 * (send it again): a store that hangs (a PostgreSQL restart, a pool waiting on a dead connection)
 * must not leave a send unanswered or hold the device's later sends behind it for longer.
 * Re-sending the id is safe: an append that did commit makes the retry a no-op answered `accepted`.
 */
export const SEND_DEADLINE_MS = 10_000;

/**
 * The frame side of the gateway: one client frame in, checked against the protocol's schemas
 * (docs/PROTOCOL.md), the device's token bucket and the 256 KiB limit, then dispatched. Sends go to
 * the messaging service in arrival order; a malformed frame gets an `error` and the socket stays.
 */
export class FrameHandler {
  /** Sends that missed SEND_DEADLINE_MS: one line per burst (a retrying crowd repeats them). */
  private readonly lateSends: LogSummary;
  /** Sends a store failed: one line per burst (during an outage every send fails). */
  private readonly failedSends: LogSummary;
  /** Every send's SEND_DEADLINE_MS, one timer for all. */
  private readonly deadlines = new FixedDeadlines(SEND_DEADLINE_MS);

  constructor(
    private readonly deps: {
      messaging: MessagingService;
      sessions: Pick<SessionService, "authenticateSession">;
      watchers: PresenceWatchers;
      logger: Logger;
      /** Sends accepted and refused, and rate-limit refusals, are counted here (metrics). */
      tallies: MessageTallies;
    },
  ) {
    this.lateSends = new LogSummary(deps.logger, "warn", "send not answered in time");
    this.failedSends = new LogSummary(deps.logger, "error", "send failed");
  }

  /**
   * Handles one frame of an open connection. Every frame first takes its length's tokens from the
   * device's bucket (`lengthCost`), before it is read: one over budget is answered `rate_limited`
   * without being parsed, so a flood of large or malformed frames costs the server no parsing.
   */
  handle(conn: DeviceConnection, message: string | Buffer): void {
    const bucket = conn.bucket;
    const paid = lengthCost(message, bucket.burst);
    if (!bucket.take(paid)) {
      this.rateLimited(conn, peekSendId(message));
      return;
    }
    if (typeof message !== "string") {
      this.invalid(conn, "frames are JSON text");
      return;
    }
    if (message.length > MAX_FRAME_BYTES || Buffer.byteLength(message) > MAX_FRAME_BYTES) {
      conn.send({ type: "error", code: "too_large", message: `frames are at most ${MAX_FRAME_BYTES} bytes` });
      return;
    }
    // Linear in the frame's length: nesting and text are checked before anything parses or walks it.
    const reading = readJson(message);
    if (!reading.ok) {
      this.invalid(conn, `frame ${reading.problem}`);
      return;
    }
    const frame = reading.value;
    const type = (frame as { type?: unknown } | null)?.type;
    const id = (frame as { id?: unknown } | null)?.id;
    // A presence.watch naming many users costs more than its length paid.
    const owed = frameCost(frame) - paid;
    if (owed > 0 && !bucket.take(owed)) {
      this.rateLimited(conn, undefined);
      return;
    }
    switch (type) {
      case "send":
        this.send(conn, frame, typeof id === "string" ? id : undefined);
        break;
      case "ack":
        // Ids in their canonical (lower-case) form.
        if (checkAck.Check(frame)) this.ack(conn, decodeCheckedAck(frame));
        else this.invalid(conn, firstProblem(checkAck, frame));
        break;
      case "presence.watch":
        if (checkPresenceWatch.Check(frame)) this.watch(conn, checkPresenceWatch.Decode(frame).users);
        else this.invalid(conn, firstProblem(checkPresenceWatch, frame));
        break;
      case "auth":
        if (checkAuth.Check(frame)) this.reauthenticate(conn, frame.token);
        else this.invalid(conn, firstProblem(checkAuth, frame));
        break;
      case "ping":
        if (checkPing.Check(frame)) conn.send({ type: "pong" });
        else this.invalid(conn, firstProblem(checkPing, frame));
        break;
      default:
        this.invalid(conn, "unknown frame type");
    }
  }

  private watch(conn: DeviceConnection, users: string[]): void {
    this.deps.watchers.watch(conn, users).then(
      (refused) => {
        if (refused === "node") {
          this.deps.tallies.refuse("presence_watches");
          conn.send({
            type: "error",
            code: "rate_limited",
            message: "this node watches too many users; the previous watch list stays, try again later",
          });
        } else if (refused === "account") {
          this.deps.tallies.refuse("presence_watches_account");
          conn.send({
            type: "error",
            code: "rate_limited",
            message:
              "your devices on this node watch too many users; the previous watch list stays, shorten another device's list",
          });
        }
      },
      (error) => this.deps.logger.warn({ err: error, user: conn.principal.userId }, "presence watch failed"),
    );
  }

  /**
   * In-band re-authentication: a valid, unrevoked access token of the socket's own user and device
   * replaces the socket's token and its expiry (`auth.ok`); anything else is `error unauthorized`
   * and the socket keeps the token it had. Answered in arrival order.
   */
  private reauthenticate(conn: DeviceConnection, token: string): void {
    const refuse = (message: string) => conn.send({ type: "error", code: "unauthorized", message });
    conn.authChain = conn.authChain.then(async () => {
      let session: Awaited<ReturnType<SessionService["authenticateSession"]>>;
      try {
        session = await this.deps.sessions.authenticateSession(token);
      } catch {
        refuse("access token is missing, malformed, expired or revoked; the socket keeps its previous one");
        return;
      }
      if (conn.closing || conn.isClosed()) return;
      const { principal } = session;
      if (principal.userId !== conn.principal.userId || principal.deviceId !== conn.principal.deviceId) {
        refuse("the token names another device; the socket keeps its previous one");
        return;
      }
      conn.ws.data.generation = session.generation;
      conn.expireAt(session.expiresAt);
      conn.send({ type: "auth.ok", expiresAt: session.expiresAt });
    });
  }

  /** A frame over the device's budget: `rejected rate_limited` for a send with an id, else `error rate_limited`. */
  private rateLimited(conn: DeviceConnection, sendId: string | undefined): void {
    this.deps.tallies.refuse("device_frames");
    if (sendId !== undefined) {
      this.deps.tallies.reject("rate_limited");
      conn.send({ type: "rejected", id: sendId, code: "rate_limited" });
    } else conn.send({ type: "error", code: "rate_limited", message: "too many frames; slow down" });
  }

  private invalid(conn: DeviceConnection, message: string): void {
    conn.send({ type: "error", code: "invalid", message });
  }

  private send(conn: DeviceConnection, frame: unknown, id: string | undefined): void {
    const { messaging, tallies } = this.deps;
    if (id) stamp(id, "rx");
    let submit: () => Promise<SubmittedSend>;
    // 1:1 sends first: the common case is then checked once.
    let isGroup = false;
    if (checkDirectSend.Check(frame)) {
      const send = decodeCheckedDirectSend(frame);
      submit = () => messaging.submitDirect(conn.principal, send);
    } else if (checkGroupSend.Check(frame)) {
      isGroup = true;
      const send = checkGroupSend.Decode(frame);
      submit = async () => ({ outcome: messaging.sendGroup(conn.principal, send) });
    } else {
      const to = (frame as { to?: { group?: unknown } }).to;
      const check = to && typeof to === "object" && "group" in to ? checkGroupSend : checkDirectSend;
      const problem = firstProblem(check, frame);
      if (id === undefined) this.invalid(conn, problem);
      else {
        tallies.reject("invalid");
        conn.send({ type: "rejected", id, code: "invalid", message: problem });
      }
      return;
    }
    let answered = false;
    const answer = (reply: ServerFrame) => {
      if (answered) return;
      answered = true;
      if (reply.type === "accepted") {
        tallies.accepted++;
        stamp(reply.id, "acc");
      } else if (reply.type === "rejected") tallies.reject(reply.code);
      else tallies.reject("internal");
      conn.send(reply);
    };
    const notAccepted = (message: string) =>
      answer({ type: "error", code: "internal", id, message: `message ${id} ${message}; send it again` });
    const failed = (error: unknown) => {
      this.failedSends.note({ err: error, user: conn.principal.userId });
      notAccepted("was not accepted");
    };
    // A device's sends are checked and queued for commit one after another, so they are accepted
    // in the order sent; the chain waits for the queueing, not for the commit. A group send waits
    // for its answer (its group actor orders it against other members' sends). Neither waits past
    // the deadline, which runs from the frame's arrival (time behind the device's earlier sends
    // counts): the sender hears a retryable error and its next sends go on.
    let timer: Deadline | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = this.deadlines.add(() => {
        if (!answered && !conn.closing) {
          this.lateSends.note({ user: conn.principal.userId });
          notAccepted("was not accepted in time");
        }
        resolve();
      });
    });
    const stopTimer = () => timer?.cancel();
    // Not on `conn.chain`: a paced drain of the offline queue holds that one for as long as the
    // reader takes (`DeviceConnection.sendChain`).
    conn.enqueueSend(async () => {
      // Closed by the server since the frame arrived (a revocation): the send is not accepted.
      // Answered already (it waited its whole deadline behind earlier sends): the sender sends it again.
      if (conn.closing || answered) {
        stopTimer();
        return;
      }
      if (id) stamp(id, "chain");
      const queued = (async () => {
        try {
          const { outcome } = await submit();
          const reply = outcome.then(answer, failed).finally(stopTimer);
          if (isGroup) await reply;
        } catch (error) {
          stopTimer();
          failed(error);
        }
      })();
      await Promise.race([queued, deadline]);
    });
  }

  private ack(conn: DeviceConnection, acked: EnvelopeRef[]): void {
    conn.acksInFlight++;
    const acking = (async () => {
      try {
        try {
          // The user actor is told at once (messaging.ack tells it before any write): a reconnect that
          // overtakes the queue's or the log's commit must not be pushed what was acked here.
          await Promise.all([this.deps.messaging.ack(conn.principal, acked), conn.drain?.ack(acked)]);
        } finally {
          conn.acksInFlight--;
        }
        // After the log recorded these acks and every earlier one: the actor removes the queue only
        // if the log owes nothing.
        if (conn.takeEmptiedQueue()) await this.deps.messaging.queueEmptied(conn.principal);
      } catch (error) {
        this.deps.logger.error({ err: error, user: conn.principal.userId }, "ack failed");
      }
    })();
    conn.acking ??= new Set();
    const acks = conn.acking;
    acks.add(acking);
    void acking.finally(() => {
      acks.delete(acking);
      if (acks.size === 0 && conn.acking === acks) conn.acking = undefined;
    });
  }
}
