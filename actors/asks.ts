import { randomUUID } from "node:crypto";
import { AskTimeoutError, NodeStoppedError, RemoteActorError } from "./actor-error.ts";
import { type Deadline, FixedDeadlines } from "./deadlines.ts";
import { errorSummary } from "./logger.ts";
import type { Outbox } from "./outbox.ts";
import type { ReplyFrame, ReplyTo } from "./transport.ts";

interface PendingAsk {
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: Deadline;
}

/** Distinct ask timeouts given one shared timer each; an ask with yet another length gets its own timer. */
const SHARED_TIMEOUTS = 16;

/**
 * The request/reply side of one node: the asks it is waiting on (`ask`, `stopActor`), their
 * timeouts, and the replies it owes to asks that came from other nodes. A reply travels as a
 * `reply` frame to the asker's inbox, or settles the ask directly when the asker is this node.
 */
export class PendingAsks {
  private readonly pending = new Map<string, PendingAsk>();
  /** Request ids are unique across restarts, so a late reply for a previous run is ignored. */
  private readonly idPrefix = randomUUID();
  private sequence = 0;
  /** One timer per timeout length for all asks of that length (FixedDeadlines), not one per ask. */
  private readonly timeouts = new Map<number, FixedDeadlines>();

  constructor(
    private readonly nodeId: string,
    private readonly outbox: Outbox,
  ) {}

  /**
   * Opens a request to `key` and sends it with `send(replyTo)`. Resolves with the value the actor's
   * `receive` returned; rejects with its error (RemoteActorError when it ran on another node),
   * with `send`'s rejection, or with AskTimeoutError after `timeoutMs` milliseconds.
   */
  request<R>(key: string, timeoutMs: number, send: (replyTo: ReplyTo) => Promise<void>): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const id = `${this.idPrefix}:${++this.sequence}`;
      const timer = this.deadline(timeoutMs, () => {
        this.pending.delete(id);
        reject(new AskTimeoutError(key, timeoutMs));
      });
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      send({ node: this.nodeId, id }).catch((error: unknown) => this.settle(id, error, undefined));
    });
  }

  /** Runs `fire` after `ms` unless cancelled: on the shared timer of that length when there is one. */
  private deadline(ms: number, fire: () => void): Deadline {
    let shared = this.timeouts.get(ms);
    if (!shared && this.timeouts.size < SHARED_TIMEOUTS) {
      shared = new FixedDeadlines(ms);
      this.timeouts.set(ms, shared);
    }
    if (shared) return shared.add(fire);
    const timer = setTimeout(fire, ms);
    return { cancel: () => clearTimeout(timer) };
  }

  /** Settles the ask `id` of this node; an unknown id (timed out, or settled already) is ignored. */
  settle(id: string, error: unknown, value: unknown): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    pending.timer.cancel();
    if (error !== undefined) pending.reject(error);
    else pending.resolve(value);
  }

  /** Settles the ask a `reply` frame from another node answers. */
  onReplyFrame(frame: ReplyFrame): void {
    this.settle(
      frame.id,
      frame.ok ? undefined : new RemoteActorError(frame.code ?? "actor_failure", frame.error ?? ""),
      frame.value,
    );
  }

  /** Answers the asker behind `reply` with an error or the value `receive` returned. */
  reply(reply: ReplyTo, error: unknown, value: unknown): void {
    if (reply.node === this.nodeId) {
      this.settle(reply.id, error, value);
      return;
    }
    const frame: ReplyFrame =
      error === undefined
        ? { t: "reply", id: reply.id, ok: true, value }
        : { t: "reply", id: reply.id, ok: false, ...describeError(error) };
    // A lost reply only costs the asker a timeout and a retry, which sends are idempotent against.
    this.outbox.send(reply.node, frame).catch(() => undefined);
  }

  /** Rejects every open ask with NodeStoppedError: this node stopped and no reply can reach it. */
  rejectAll(): void {
    for (const [id, pending] of this.pending) {
      pending.timer.cancel();
      this.pending.delete(id);
      pending.reject(new NodeStoppedError(this.nodeId));
    }
  }
}

function describeError(error: unknown): { code: string; error: string } {
  const { code, message } = errorSummary(error);
  return { code: code ?? "actor_failure", error: message };
}
