import { ActorStoppedError } from "./actor-error.ts";
import { Mailbox } from "./mailbox.ts";

/** Lifecycle: activating → active → passivating|stopping → stopped. Only `active`/`activating` take mail. */
export type ActorStatus = "activating" | "active" | "passivating" | "stopping" | "stopped";

/** Why an actor is being passivated; its state must be saved or reloadable in every case. */
export type PassivationReason = "idle" | "handoff" | "shutdown";

/** Sending side of the actor system, available to actors through their context. */
export interface ActorRefs {
  /** Fire-and-forget; resolves when accepted (enqueued locally or durably handed to the owner's node). */
  tell(key: string, message: unknown): Promise<void>;
  /** The same message to many actors: one transfer per owning node, not one per actor. */
  tellMany(keys: readonly string[], message: unknown): Promise<void>;
  /** Request/reply: resolves with the value the actor's `receive` returned. */
  ask<R = unknown>(key: string, message: unknown, options?: { timeoutMs?: number }): Promise<R>;
  /** Stops the actor wherever it lives, without passivation (erasure uses this). */
  stopActor(key: string, reason?: string): Promise<void>;
}

/** What an actor's behaviour sees of itself. */
export interface ActorContext {
  /** Full key, e.g. `user:<id>`. */
  readonly key: string;
  /** The part of the key after the kind, e.g. the user id. */
  readonly id: string;
  readonly nodeId: string;
  readonly system: ActorRefs;
  /** Stops this actor after the current message; queued messages are refused with ActorStoppedError. */
  stop(reason?: string): void;
}

/** An actor's code. One instance per activation; keep fields small, it lives as long as the activation. */
export interface ActorBehavior<M = unknown, R = unknown> {
  /** Loads or rebuilds state; messages wait until it resolves. */
  onActivate?(ctx: ActorContext): void | Promise<void>;
  /** Handles one message; a throw is contained, reported, and answered to an asker as an error. */
  receive(message: M, ctx: ActorContext): R | Promise<R>;
  /** Saves state before the activation goes away (idle, handoff to another node, shutdown). */
  onPassivate?(ctx: ActorContext, reason: PassivationReason): void | Promise<void>;
  /** Last call before an explicit stop (erasure): nothing is saved. */
  onStop?(ctx: ActorContext, reason: string): void | Promise<void>;
}

/** Creates the behaviour for one activation of `key` of a registered kind. */
export type ActorFactory = (id: string, key: string) => ActorBehavior;

/** Result of offering a message to an actor. `gone`: it is leaving, route the message again. */
export type DeliverResult = "ok" | "full" | "gone";

/** Completion callback of one delivery: error, or the value `receive` returned. */
export type DeliveryDone = (error: unknown, value?: unknown) => void;

/** Services the hosting node gives its actors; one shared instance per node. */
export interface ActorHost {
  readonly nodeId: string;
  readonly refs: ActorRefs;
  now(): number;
  reportFailure(actor: Actor, error: unknown, phase: "activate" | "receive" | "passivate" | "stop"): void;
  onStopped(actor: Actor): void;
}

interface Delivery {
  message: unknown;
  done: DeliveryDone | undefined;
}

/** How many messages one drain processes before yielding to the event loop. */
const DRAIN_SLICE = 1024;

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function"
  );
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * One activation of an actor: owns its mailbox, processes one message at a time, and contains
 * its behaviour's failures so a bad message never stops the actor or the node.
 */
export class Actor implements ActorContext {
  status: ActorStatus = "activating";
  /** Host clock reading when the actor last finished work; drives idle passivation. */
  lastActive: number;
  private busy = false;
  private activated = false;
  private stopReason: string | undefined;
  private idleWaiters: (() => void)[] | undefined;
  private finished: Promise<void> | undefined;
  private readonly mailbox: Mailbox<Delivery>;

  constructor(
    readonly key: string,
    private readonly behavior: ActorBehavior,
    private readonly host: ActorHost,
    mailboxCapacity: number,
  ) {
    this.mailbox = new Mailbox(mailboxCapacity);
    this.lastActive = host.now();
  }

  get id(): string {
    const colon = this.key.indexOf(":");
    return colon < 0 ? this.key : this.key.slice(colon + 1);
  }

  get nodeId(): string {
    return this.host.nodeId;
  }

  get system(): ActorRefs {
    return this.host.refs;
  }

  /** Messages waiting in the mailbox. */
  get queued(): number {
    return this.mailbox.size;
  }

  /** True when nothing is queued or running. */
  get idle(): boolean {
    return this.activated && !this.busy && this.mailbox.size === 0;
  }

  /** Runs `onActivate` (after `after`, e.g. a previous activation's passivation), then drains queued mail. */
  async activate(after?: Promise<void>): Promise<void> {
    if (after) await after;
    try {
      await this.behavior.onActivate?.(this);
    } catch (error) {
      this.host.reportFailure(this, error, "activate");
      this.stopReason = "activation failed";
      for (const delivery of this.mailbox.clear()) delivery.done?.(error);
      this.activated = true;
      await this.finish(undefined);
      this.notifyIdle();
      return;
    }
    this.activated = true;
    if (this.status === "activating") this.status = "active";
    this.lastActive = this.host.now();
    if (this.mailbox.size > 0 && !this.busy) this.scheduleDrain();
    else this.notifyIdle();
  }

  /**
   * Offers a message. `force` bypasses the capacity bound (transport-delivered envelopes are
   * already accepted and bounded by the transport's prefetch); otherwise a full mailbox says `full`.
   */
  deliver(message: unknown, done?: DeliveryDone, force = false): DeliverResult {
    if (this.status !== "active" && this.status !== "activating") return "gone";
    const delivery: Delivery = { message, done };
    if (force) this.mailbox.force(delivery);
    else if (!this.mailbox.offer(delivery)) return "full";
    if (this.status === "active" && !this.busy) this.scheduleDrain();
    return "ok";
  }

  /** Resolves when the mailbox has room for a non-forced delivery. */
  whenWritable(): Promise<void> {
    return this.mailbox.whenWritable();
  }

  /** Finishes queued mail, saves state through `onPassivate`, and leaves. Idempotent. */
  passivate(reason: PassivationReason): Promise<void> {
    if (this.finished) return this.finished;
    this.status = "passivating";
    this.finished = this.whenIdle().then(async () => {
      if (this.status === "stopped") return;
      try {
        await this.behavior.onPassivate?.(this, reason);
      } catch (error) {
        this.host.reportFailure(this, error, "passivate");
      }
      this.status = "stopped";
      this.host.onStopped(this);
    });
    return this.finished;
  }

  /** Stops after the current message; queued messages are refused. Idempotent. */
  stop(reason = "stopped"): Promise<void> {
    if (this.finished) return this.finished;
    this.stopReason = reason;
    this.status = "stopping";
    if (this.busy) {
      this.finished = new Promise<void>((resolve) => {
        this.onIdle(resolve);
      }).then(() => this.finish(reason));
      return this.finished;
    }
    this.finished = this.finish(reason);
    return this.finished;
  }

  /** Resolves once the actor has passivated or stopped. */
  whenStopped(): Promise<void> {
    return this.finished ?? this.passivate("shutdown");
  }

  private async finish(reason: string | undefined): Promise<void> {
    for (const delivery of this.mailbox.clear()) delivery.done?.(new ActorStoppedError(this.key));
    if (reason !== undefined) {
      try {
        await this.behavior.onStop?.(this, reason);
      } catch (error) {
        this.host.reportFailure(this, error, "stop");
      }
    }
    this.status = "stopped";
    this.host.onStopped(this);
  }

  private whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    return new Promise((resolve) => this.onIdle(resolve));
  }

  private onIdle(wake: () => void): void {
    if (this.idleWaiters === undefined) this.idleWaiters = [];
    this.idleWaiters.push(wake);
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    if (waiters === undefined) return;
    this.idleWaiters = undefined;
    for (const wake of waiters) wake();
  }

  private scheduleDrain(): void {
    this.busy = true;
    queueMicrotask(() => void this.drain());
  }

  private async drain(): Promise<void> {
    let processed = 0;
    for (let delivery = this.mailbox.shift(); delivery !== undefined; delivery = this.mailbox.shift()) {
      let value: unknown;
      let failure: unknown;
      try {
        value = this.behavior.receive(delivery.message, this);
        if (isThenable(value)) value = await value;
      } catch (error) {
        failure = error ?? new Error("actor threw a nullish value");
        this.host.reportFailure(this, failure, "receive");
      }
      delivery.done?.(failure, value);
      if (this.stopReason !== undefined) break;
      if (++processed % DRAIN_SLICE === 0) await yieldToEventLoop();
    }
    this.lastActive = this.host.now();
    this.busy = false;
    this.notifyIdle();
  }
}
