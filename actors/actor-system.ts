import { randomUUID } from "node:crypto";
import {
  Actor,
  type ActorFactory,
  type ActorHost,
  type ActorRefs,
  type Actor as ActorType,
  type DeliveryDone,
} from "./actor.ts";
import {
  AskTimeoutError,
  MailboxFullError,
  NodeStoppedError,
  RemoteActorError,
  UnknownActorKindError,
  UnknownNodeError,
  UnroutableError,
} from "./actor-error.ts";
import { HandoffGate } from "./handoff-gate.ts";
import { errorSummary, type Logger, silentLogger } from "./logger.ts";
import type { MemberInfo, Membership } from "./membership.ts";
import { Outbox } from "./outbox.ts";
import { type Clock, systemClock } from "./ports.ts";
import { DEFAULT_VNODES, Ring } from "./ring.ts";
import type { EnvelopeFrame, Frame, HandoffFrame, ReplyFrame, ReplyTo, Transport } from "./transport.ts";

/** Options for {@link ActorSystem}; `createActorNode` fills them from URLs. */
export interface ActorSystemOptions {
  nodeId: string;
  /** Address published in the membership (for operators and the gateway). Default: the node id. */
  address?: string;
  membership: Membership;
  transport: Transport;
  /** Virtual nodes per member. Must be equal on every node. Default 512. */
  vnodes?: number;
  /** Mailbox bound per actor for local senders. Default 10,000. */
  mailboxCapacity?: number;
  /** Passivate an actor idle this long; 0 disables. Default 5 minutes. */
  idleTimeoutMs?: number;
  /** Longest wait for a previous owner's handoff before activating anyway. Default 5 s. */
  handoffTimeoutMs?: number;
  /** Default `ask` timeout. Default 10 s. */
  askTimeoutMs?: number;
  /** Open client connections on this node, reported in the cluster view. */
  connections?: () => number;
  clock?: Clock;
  logger?: Logger;
  /** Called for every contained actor failure, after it was logged. */
  onFailure?: (key: string, error: unknown, phase: string) => void;
}

/** One node in `GET /admin/v1/cluster`. */
export interface ClusterNodeView {
  nodeId: string;
  address: string;
  status: string;
  actors: number;
  connections: number;
}

/** Body of `GET /admin/v1/cluster`. */
export interface ClusterView {
  self: string;
  nodes: ClusterNodeView[];
  ring: { vnodes: number; vnodesPerMember: number; members: readonly string[] };
}

/** Counters for metrics and benchmarks. */
export interface ActorSystemStats {
  actors: number;
  processed: number;
  forwarded: number;
  failures: number;
  activations: number;
}

type NodeState = "new" | "running" | "stopping" | "stopped" | "aborted";

interface Envelope {
  key: string;
  message: unknown;
  hops: number;
  reply?: ReplyTo;
  stop?: string;
  /** Set for envelopes that came over the transport: called once processed or passed on. */
  settle?: () => void;
}

interface PendingAsk {
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Forwards after which a message is slowed down: rings disagree and must converge first. */
const BOUNCE_LIMIT = 8;
const BOUNCE_DELAY_MS = 100;
/** How often a dead node's inbox adoption is retried and idle actors are swept. */
const MAINTENANCE_MS = 1000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * One node of the actor system: hosts the actors this node owns on the ring, forwards envelopes
 * for the others, and hands actors off when the membership changes. No globals: several systems
 * can run side by side in one process.
 */
export class ActorSystem implements ActorRefs, ActorHost {
  readonly nodeId: string;
  readonly refs: ActorRefs = this;
  private readonly address: string;
  private readonly membership: Membership;
  private readonly transport: Transport;
  private readonly vnodes: number;
  private readonly mailboxCapacity: number;
  private readonly idleTimeoutMs: number;
  private readonly askTimeoutMs: number;
  private readonly connections: () => number;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly onFailure: ActorSystemOptions["onFailure"];
  private readonly kinds = new Map<string, ActorFactory>();
  /** Kinds whose key names the node they live on (`<kind>:<nodeId>`); the ring never moves them. */
  private readonly pinnedKinds = new Set<string>();
  private readonly actors = new Map<string, ActorType>();
  private readonly asks = new Map<string, PendingAsk>();
  private readonly askPrefix = randomUUID();
  private readonly adopting = new Set<string>();
  private readonly gate: HandoffGate;
  private readonly outbox: Outbox;
  private ring: Ring;
  private members: readonly MemberInfo[] = [];
  private firstView = true;
  private markReady!: () => void;
  private readonly ready = new Promise<void>((resolve) => {
    this.markReady = resolve;
  });
  private handoffs: Promise<void> = RESOLVED;
  private state: NodeState = "new";
  private askSequence = 0;
  private maintenance: ReturnType<typeof setInterval> | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly counters = { processed: 0, forwarded: 0, failures: 0, activations: 0 };

  constructor(options: ActorSystemOptions) {
    if (!options.nodeId) throw new Error('ActorSystem requires options "nodeId"');
    if (options.membership.self !== options.nodeId || options.transport.nodeId !== options.nodeId) {
      throw new Error("ActorSystem requires membership and transport built for the same nodeId");
    }
    this.nodeId = options.nodeId;
    this.address = options.address ?? options.nodeId;
    this.membership = options.membership;
    this.transport = options.transport;
    this.vnodes = options.vnodes ?? DEFAULT_VNODES;
    this.mailboxCapacity = options.mailboxCapacity ?? 10_000;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 300_000;
    this.askTimeoutMs = options.askTimeoutMs ?? 10_000;
    this.connections = options.connections ?? (() => 0);
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger ?? silentLogger;
    this.onFailure = options.onFailure;
    this.ring = new Ring([], this.vnodes);
    this.outbox = new Outbox(this.transport);
    this.gate = new HandoffGate(this.nodeId, options.handoffTimeoutMs ?? 5000, (from) =>
      this.logger.warn({ nodeId: this.nodeId, from }, "handoff timed out; activating without it"),
    );
  }

  /** Registers the factory for keys `<kind>:<id>`. Call before `start`, identically on every node. */
  register(kind: string, factory: ActorFactory): this {
    if (kind.includes(":")) throw new Error(`actor kind must not contain ":" (got ${kind})`);
    this.kinds.set(kind, factory);
    return this;
  }

  /**
   * Registers a pinned kind: `<kind>:<nodeId>` lives on node `nodeId` and is never handed off, so
   * other nodes can address a node itself (e.g. the gateway holding a device's socket). Sending to
   * a node that is not a live member fails with UnknownNodeError instead of waiting for it.
   */
  registerPinned(kind: string, factory: ActorFactory): this {
    this.register(kind, factory);
    this.pinnedKinds.add(kind);
    return this;
  }

  /** The node a pinned key names, or undefined for ring-placed keys. */
  private pinnedNode(key: string): string | undefined {
    if (this.pinnedKinds.size === 0) return undefined;
    const colon = key.indexOf(":");
    if (colon < 0 || !this.pinnedKinds.has(key.slice(0, colon))) return undefined;
    return key.slice(colon + 1);
  }

  /** Opens this node's inbox, joins the membership, and waits for the first ring. */
  async start(): Promise<void> {
    if (this.state !== "new") throw new Error(`ActorSystem ${this.nodeId} was already started`);
    this.state = "running";
    await this.transport.start(this.onTransfer, (error) => this.onTransportFatal(error));
    this.unsubscribe = this.membership.onChange((members) => this.onMembers(members));
    await this.membership.join({ address: this.address }, () => ({
      actors: this.actors.size,
      connections: this.connections(),
    }));
    if (this.firstView) this.onMembers(this.membership.members());
    await this.ready;
    this.maintenance = setInterval(() => this.maintain(), Math.min(MAINTENANCE_MS, this.sweepInterval()));
    this.maintenance.unref?.();
  }

  tell(key: string, message: unknown): Promise<void> {
    return this.route({ key, message, hops: 0 });
  }

  tellMany(keys: readonly string[], message: unknown): Promise<void> {
    const remote = new Map<string, string[]>();
    const waits: Promise<void>[] = [];
    for (const key of keys) {
      const owner = this.ownerOf(key);
      if (owner === this.nodeId) {
        waits.push(this.deliverLocal({ key, message, hops: 0 }));
        continue;
      }
      const group = remote.get(owner);
      if (group) group.push(key);
      else remote.set(owner, [key]);
    }
    for (const [owner, group] of remote) {
      const frame: EnvelopeFrame = { t: "env", keys: group, msg: message, hops: 1 };
      this.counters.forwarded += group.length;
      waits.push(
        this.outbox.send(owner, frame).catch((error: unknown) => {
          if (!(error instanceof UnroutableError)) throw error;
          return Promise.all(group.map((key) => this.reroute({ key, message, hops: 1 }, owner))).then(
            () => {},
          );
        }),
      );
    }
    return Promise.all(waits).then(() => {});
  }

  ask<R = unknown>(key: string, message: unknown, options?: { timeoutMs?: number }): Promise<R> {
    return this.request<R>({ key, message, hops: 0 }, options?.timeoutMs ?? this.askTimeoutMs);
  }

  stopActor(key: string, reason = "stopped"): Promise<void> {
    return this.request<void>({ key, message: undefined, hops: 0, stop: reason }, this.askTimeoutMs);
  }

  /** The node that owns `key` on this node's current ring. */
  ownerOf(key: string): string {
    return this.pinnedNode(key) ?? this.ring.ownerOf(key) ?? this.nodeId;
  }

  /** True when an activation of `key` lives on this node (even if it is passivating). */
  isActive(key: string): boolean {
    const actor = this.actors.get(key);
    return actor !== undefined && actor.status !== "stopped";
  }

  /** Keys of the actors active on this node. */
  activeKeys(): string[] {
    return [...this.actors.keys()];
  }

  /** Members of the current ring, sorted. */
  ringMembers(): readonly string[] {
    return this.ring.members;
  }

  stats(): ActorSystemStats {
    return { actors: this.actors.size, ...this.counters };
  }

  /** Members, their counts and the ring, for `GET /admin/v1/cluster`. */
  clusterView(): ClusterView {
    // The membership's latest read carries fresh heartbeat counts; `this.members` only tracks changes.
    const nodes = this.membership.members().map((member) =>
      member.nodeId === this.nodeId
        ? {
            nodeId: this.nodeId,
            address: this.address,
            status: member.status,
            actors: this.actors.size,
            connections: this.connections(),
          }
        : {
            nodeId: member.nodeId,
            address: member.address,
            status: member.status,
            actors: member.actors,
            connections: member.connections,
          },
    );
    return {
      self: this.nodeId,
      nodes,
      ring: { vnodes: this.ring.size, vnodesPerMember: this.vnodes, members: this.ring.members },
    };
  }

  /**
   * Drains `nodeId` (default: this node): it leaves the ring, hands every actor to its new owner
   * and keeps forwarding what still reaches it. For this node, resolves when the handoff is done.
   */
  async drain(nodeId: string = this.nodeId): Promise<void> {
    if (nodeId !== this.nodeId) {
      if (!this.members.some((member) => member.nodeId === nodeId)) throw new UnknownNodeError(nodeId);
      await this.outbox.send(nodeId, { t: "drain", node: nodeId });
      return;
    }
    if (this.state !== "running" && this.state !== "stopping") return;
    await this.membership.setStatus("draining");
    if (this.ring.has(this.nodeId)) this.onMembers(this.membership.members());
    await this.handoffs;
  }

  /** Graceful shutdown: drain, passivate what is left, delete the inbox if empty, leave. */
  async stop(): Promise<void> {
    if (this.state !== "running") return;
    this.state = "stopping";
    this.stopMaintenance();
    await this.drain();
    await Promise.all([...this.actors.values()].map((actor) => actor.passivate("shutdown")));
    const deleted = await this.transport.stop();
    this.state = "stopped";
    this.unsubscribe?.();
    await this.membership.leave({ forget: deleted });
    this.gate.clear();
    this.rejectAsks();
  }

  /** Abrupt stop, as a crash: no handoff, no passivation, no goodbye; peers notice by TTL. */
  async abort(): Promise<void> {
    if (this.state === "stopped" || this.state === "aborted") return;
    this.state = "aborted";
    this.stopMaintenance();
    this.unsubscribe?.();
    this.actors.clear();
    await Promise.all([this.membership.abort(), this.transport.abort()]);
    this.rejectAsks();
  }

  // ActorHost

  now(): number {
    return this.clock.now();
  }

  reportFailure(
    actor: ActorType,
    error: unknown,
    phase: "activate" | "receive" | "passivate" | "stop",
  ): void {
    this.counters.failures++;
    this.logger.warn(
      { nodeId: this.nodeId, key: actor.key, phase, err: errorSummary(error) },
      "actor failure",
    );
    try {
      this.onFailure?.(actor.key, error, phase);
    } catch {
      // A failing observer must not turn a contained failure into an uncontained one.
    }
  }

  onStopped(actor: ActorType): void {
    if (this.actors.get(actor.key) === actor) this.actors.delete(actor.key);
  }

  // Routing

  private route(envelope: Envelope): Promise<void> {
    if (this.state === "stopped" || this.state === "aborted") {
      return Promise.reject(new NodeStoppedError(this.nodeId));
    }
    const owner = this.ownerOf(envelope.key);
    if (owner === this.nodeId) return this.deliverLocal(envelope);
    if (this.pinnedNode(envelope.key) !== undefined && !this.members.some((m) => m.nodeId === owner)) {
      return Promise.reject(new UnknownNodeError(owner));
    }
    return this.forward(owner, envelope);
  }

  private deliverLocal(envelope: Envelope): Promise<void> {
    if (this.pinnedNode(envelope.key) === undefined && this.gate.mustHold(envelope.key)) {
      return new Promise((resolve, reject) => {
        this.gate.hold({
          key: envelope.key,
          hops: envelope.hops,
          release: () => void this.route(envelope).then(resolve, reject),
        });
      });
    }
    let actor = this.actors.get(envelope.key);
    if (envelope.stop !== undefined) {
      const stopped = actor ? actor.stop(envelope.stop) : RESOLVED;
      stopped.then(() => this.complete(envelope, undefined, undefined));
      return RESOLVED;
    }
    if (!actor) {
      try {
        actor = this.activate(envelope.key);
      } catch (error) {
        return Promise.reject(error);
      }
    }
    const result = actor.deliver(envelope.message, this.doneFor(envelope), envelope.settle !== undefined);
    if (result === "ok") return RESOLVED;
    if (result === "full") return Promise.reject(new MailboxFullError(envelope.key));
    // The activation is leaving (idle, handoff); route again once it is gone, ownership may have moved.
    return actor.whenStopped().then(() => this.route(envelope));
  }

  private doneFor(envelope: Envelope): DeliveryDone | undefined {
    if (envelope.reply === undefined && envelope.settle === undefined) return this.countProcessed;
    return (error, value) => this.complete(envelope, error, value);
  }

  private readonly countProcessed: DeliveryDone = () => {
    this.counters.processed++;
  };

  private complete(envelope: Envelope, error: unknown, value: unknown): void {
    this.counters.processed++;
    if (envelope.reply) this.sendReply(envelope.reply, error, value);
    envelope.settle?.();
  }

  private forward(owner: string, envelope: Envelope): Promise<void> {
    if (envelope.hops >= BOUNCE_LIMIT) {
      return sleep(BOUNCE_DELAY_MS)
        .then(() => this.membership.refresh())
        .then(() => {
          const now = this.ownerOf(envelope.key);
          return now === this.nodeId ? this.deliverLocal(envelope) : this.send(now, envelope);
        });
    }
    return this.send(owner, envelope);
  }

  private send(owner: string, envelope: Envelope): Promise<void> {
    const frame: EnvelopeFrame = {
      t: "env",
      keys: [envelope.key],
      msg: envelope.message,
      hops: envelope.hops + 1,
    };
    if (envelope.reply) frame.reply = envelope.reply;
    if (envelope.stop !== undefined) frame.stop = envelope.stop;
    this.counters.forwarded++;
    return this.outbox.send(owner, frame).then(
      () => envelope.settle?.(),
      (error: unknown) => {
        if (error instanceof UnroutableError) return this.reroute(envelope, owner);
        throw error;
      },
    );
  }

  /** The owner's inbox is gone (it left or died and was adopted): wait until the ring drops it. */
  private async reroute(envelope: Envelope, goneOwner: string): Promise<void> {
    await this.membership.refresh().catch(() => undefined);
    while (this.ownerOf(envelope.key) === goneOwner && this.state !== "stopped" && this.state !== "aborted") {
      await sleep(BOUNCE_DELAY_MS);
      await this.membership.refresh().catch(() => undefined);
    }
    return this.route(envelope);
  }

  private request<R>(envelope: Envelope, timeoutMs: number): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const id = `${this.askPrefix}:${++this.askSequence}`;
      const timer = setTimeout(() => {
        this.asks.delete(id);
        reject(new AskTimeoutError(envelope.key, timeoutMs));
      }, timeoutMs);
      this.asks.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      envelope.reply = { node: this.nodeId, id };
      this.route(envelope).catch((error: unknown) => this.settleAsk(id, error, undefined));
    });
  }

  private settleAsk(id: string, error: unknown, value: unknown): void {
    const pending = this.asks.get(id);
    if (!pending) return;
    this.asks.delete(id);
    clearTimeout(pending.timer);
    if (error !== undefined) pending.reject(error);
    else pending.resolve(value);
  }

  private sendReply(reply: ReplyTo, error: unknown, value: unknown): void {
    if (reply.node === this.nodeId) {
      this.settleAsk(reply.id, error, value);
      return;
    }
    const frame: ReplyFrame =
      error === undefined
        ? { t: "reply", id: reply.id, ok: true, value }
        : { t: "reply", id: reply.id, ok: false, ...this.describeError(error) };
    // A lost reply only costs the asker a timeout and a retry, which sends are idempotent against.
    this.outbox.send(reply.node, frame).catch(() => undefined);
  }

  private describeError(error: unknown): { code: string; error: string } {
    const { code, message } = errorSummary(error);
    return { code: code ?? "actor_failure", error: message };
  }

  private activate(key: string): ActorType {
    const colon = key.indexOf(":");
    const factory = this.kinds.get(colon < 0 ? key : key.slice(0, colon));
    if (!factory) throw new UnknownActorKindError(key);
    const actor = new Actor(key, factory(key.slice(colon + 1), key), this, this.mailboxCapacity);
    this.actors.set(key, actor);
    this.counters.activations++;
    void actor.activate();
    return actor;
  }

  // Transport side

  private readonly onTransfer = async (frames: Frame[]): Promise<void> => {
    await this.ready;
    const pending: Promise<void>[] = [];
    for (const frame of frames) {
      switch (frame.t) {
        case "env":
          for (const key of frame.keys) {
            pending.push(
              this.routeInbound({
                key,
                message: frame.msg,
                hops: frame.hops,
                reply: frame.reply,
                stop: frame.stop,
              }),
            );
          }
          break;
        case "reply":
          this.settleAsk(
            frame.id,
            frame.ok ? undefined : new RemoteActorError(frame.code ?? "actor_failure", frame.error ?? ""),
            frame.value,
          );
          break;
        case "handoff":
          this.onHandoffNotice(frame);
          break;
        case "drain":
          // A drain addressed to a dead node reaches its adopter: it is not for us.
          if (frame.node === this.nodeId) {
            this.drain().catch((error: unknown) =>
              this.logger.error({ err: errorSummary(error) }, "drain failed"),
            );
          }
          break;
      }
    }
    await Promise.all(pending);
  };

  /** Resolves once the envelope was processed here or confirmed on its way to the owner. */
  private routeInbound(envelope: Envelope): Promise<void> {
    return new Promise((resolve) => {
      envelope.settle = resolve;
      this.route(envelope).catch((error: unknown) => {
        // A stopped node leaves the transfer unacknowledged so the broker gives it to a survivor.
        if (this.state === "stopped" || this.state === "aborted") return;
        this.logger.warn(
          { nodeId: this.nodeId, key: envelope.key, err: errorSummary(error) },
          "envelope refused",
        );
        if (envelope.reply) this.sendReply(envelope.reply, error, undefined);
        resolve();
      });
    });
  }

  private onHandoffNotice(frame: HandoffFrame): void {
    this.gate.noticeFrom(frame.from, frame.ring);
    for (const key of frame.keys) {
      if (this.ownerOf(key) !== this.nodeId || this.actors.has(key) || this.gate.mustHold(key)) continue;
      try {
        this.activate(key);
      } catch (error) {
        this.logger.warn({ key, err: errorSummary(error) }, "could not reactivate handed-off actor");
      }
    }
  }

  private onTransportFatal(error: unknown): void {
    if (this.state !== "running") return;
    this.logger.error(
      { nodeId: this.nodeId, err: errorSummary(error) },
      "transport lost; leaving the cluster",
    );
    void this.abort();
  }

  // Membership side

  private ringFor(members: readonly MemberInfo[]): Ring {
    const up = members.filter((member) => member.status === "up");
    // With every member draining there is nowhere to hand off to: keep serving.
    return new Ring(
      (up.length > 0 ? up : members).map((member) => member.nodeId),
      this.vnodes,
    );
  }

  private onMembers(members: readonly MemberInfo[]): void {
    if (this.state === "stopped" || this.state === "aborted" || this.state === "new") return;
    this.members = members;
    const alive = new Set(members.map((member) => member.nodeId));
    const next = this.ringFor(members);
    if (this.firstView || next.fingerprint !== this.ring.fingerprint) {
      // A joining node waits for everyone who owned its keys before it existed.
      const previous = this.firstView
        ? this.ringFor(members.filter((member) => member.nodeId !== this.nodeId))
        : this.ring;
      this.firstView = false;
      this.ring = next;
      this.gate.ringChanged(previous, next, alive);
      this.logger.info({ nodeId: this.nodeId, ring: next.members }, "ring changed");
      this.handoffs = this.handoffs
        .then(() => this.handOff(next, alive))
        .catch((error: unknown) => this.logger.error({ err: errorSummary(error) }, "handoff failed"));
      this.markReady();
    }
    this.adoptDeadNodes();
  }

  /** Passivates the actors that moved away, then tells every peer it may activate what it gained. */
  private async handOff(next: Ring, alive: ReadonlySet<string>): Promise<void> {
    const moving = [...this.actors.values()].filter(
      (actor) => this.pinnedNode(actor.key) === undefined && next.ownerOf(actor.key) !== this.nodeId,
    );
    await Promise.all(moving.map((actor) => actor.passivate("handoff")));
    const keysByOwner = new Map<string, string[]>();
    for (const actor of moving) {
      const owner = next.ownerOf(actor.key);
      if (owner === undefined || owner === this.nodeId) continue;
      const keys = keysByOwner.get(owner);
      if (keys) keys.push(actor.key);
      else keysByOwner.set(owner, [actor.key]);
    }
    const notices: Promise<void>[] = [];
    for (const peer of alive) {
      if (peer === this.nodeId) continue;
      const frame: HandoffFrame = {
        t: "handoff",
        from: this.nodeId,
        ring: next.fingerprint,
        keys: keysByOwner.get(peer) ?? [],
      };
      notices.push(this.outbox.send(peer, frame).catch(() => undefined));
    }
    await Promise.all(notices);
    if (moving.length > 0)
      this.logger.info({ nodeId: this.nodeId, actors: moving.length }, "handed actors off");
  }

  /** The survivor owning `node:<dead>` on the ring drains the dead node's inbox, then forgets it. */
  private adoptDeadNodes(): void {
    if (this.state !== "running") return;
    for (const dead of this.membership.deadNodes()) {
      if (dead === this.nodeId || this.adopting.has(dead)) continue;
      if (this.ring.ownerOf(`node:${dead}`) !== this.nodeId) continue;
      this.adopting.add(dead);
      const cameBack = () =>
        this.state !== "running" || this.members.some((member) => member.nodeId === dead);
      this.transport
        .adopt(dead, this.onTransfer, cameBack)
        .then(async (deleted) => {
          if (!deleted) return;
          await this.membership.forget(dead);
          this.logger.info({ nodeId: this.nodeId, dead }, "adopted and removed a dead node's inbox");
        })
        .catch((error: unknown) => this.logger.warn({ dead, err: errorSummary(error) }, "adoption failed"))
        .finally(() => this.adopting.delete(dead));
    }
  }

  private sweepInterval(): number {
    return this.idleTimeoutMs > 0 ? Math.max(50, this.idleTimeoutMs / 2) : MAINTENANCE_MS;
  }

  private maintain(): void {
    this.adoptDeadNodes();
    if (this.idleTimeoutMs <= 0) return;
    const now = this.clock.now();
    for (const actor of this.actors.values()) {
      if (actor.status === "active" && actor.idle && now - actor.lastActive >= this.idleTimeoutMs) {
        void actor.passivate("idle");
      }
    }
  }

  private stopMaintenance(): void {
    if (this.maintenance) clearInterval(this.maintenance);
    this.maintenance = undefined;
  }

  private rejectAsks(): void {
    for (const [id, pending] of this.asks) {
      clearTimeout(pending.timer);
      this.asks.delete(id);
      pending.reject(new NodeStoppedError(this.nodeId));
    }
  }
}
