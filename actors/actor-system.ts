import { Activations } from "./activations.ts";
import type { ActorFactory, ActorHost, ActorRefs, Actor as ActorType } from "./actor.ts";
import { UnknownNodeError } from "./actor-error.ts";
import { PendingAsks } from "./asks.ts";
import { type Logger, silentLogger } from "./logger.ts";
import type { Membership } from "./membership.ts";
import { Outbox } from "./outbox.ts";
import { Placement } from "./placement.ts";
import { type Clock, systemClock } from "./ports.ts";
import { DEFAULT_VNODES } from "./ring.ts";
import { Router } from "./routing.ts";
import type { Transport } from "./transport.ts";

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

/** Counters for metrics and benchmarks; every count is since the node started. */
export interface ActorSystemStats {
  actors: number;
  processed: number;
  forwarded: number;
  failures: number;
  activations: number;
  /** Actors this node handed to a new owner after ring changes. */
  handedOff: number;
  /** Members of this node's current ring. */
  ringMembers: number;
  /** Node-to-node transport: transfers sent (and their frames), confirmed, failed; received. */
  transport: {
    transfersSent: number;
    framesSent: number;
    transfersConfirmed: number;
    transfersFailed: number;
    transfersReceived: number;
    framesReceived: number;
  };
}

/** Nodes that went away, as one membership change showed ({@link ActorSystem.onNodesGone}). */
export interface NodesGone {
  /** Newly among the dead without a leave heard: registered, heartbeat key expired (a crash, a freeze, a partition). */
  expired: readonly string[];
  /**
   * Newly among the dead after announcing a graceful leave: stopped, but still registered because
   * their inbox was not empty (`Membership.leftNodes`). Not a death; their sockets were closed.
   */
  left: readonly string[];
  /** Off the dead list: a survivor adopted and deleted the inbox, the broker had dropped the node's connection. */
  forgotten: readonly string[];
}

/** Active actors by kind and their mailboxes, counted when asked ({@link ActorSystem.census}). */
export interface ActorCensus {
  byKind: Map<string, number>;
  /** Messages waiting in every mailbox of this node. */
  queued: number;
  /** Messages waiting in the fullest mailbox. */
  maxQueued: number;
}

type NodeState = "new" | "running" | "stopping" | "stopped" | "aborted";

/**
 * One node of the actor system: hosts the actors this node owns on the ring, forwards envelopes
 * for the others, and hands actors off when the membership changes. No globals: several systems
 * can run side by side in one process.
 *
 * A façade over its collaborators: {@link Activations} (the local actors), {@link Router}
 * (tell, tellMany, forwarding, inbound transfers), {@link PendingAsks} (ask and its replies) and
 * {@link Placement} (ring, handoff, adoption of dead nodes, maintenance sweep). It owns the
 * node's lifecycle: start, drain, stop, abort.
 */
export class ActorSystem implements ActorRefs, ActorHost {
  readonly nodeId: string;
  readonly refs: ActorRefs = this;
  private readonly address: string;
  private readonly membership: Membership;
  private readonly transport: Transport;
  private readonly vnodes: number;
  private readonly askTimeoutMs: number;
  private readonly connections: () => number;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly onFailure: ActorSystemOptions["onFailure"];
  private readonly outbox: Outbox;
  private readonly actors: Activations;
  private readonly asks: PendingAsks;
  private readonly placement: Placement;
  private readonly router: Router;
  private state: NodeState = "new";
  private failures = 0;

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
    this.askTimeoutMs = options.askTimeoutMs ?? 10_000;
    this.connections = options.connections ?? (() => 0);
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger ?? silentLogger;
    this.onFailure = options.onFailure;
    this.outbox = new Outbox(this.transport);
    this.actors = new Activations(this, options.mailboxCapacity ?? 10_000);
    this.asks = new PendingAsks(this.nodeId, this.outbox);
    this.placement = new Placement({
      nodeId: this.nodeId,
      membership: this.membership,
      transport: this.transport,
      outbox: this.outbox,
      actors: this.actors,
      vnodes: this.vnodes,
      handoffTimeoutMs: options.handoffTimeoutMs ?? 5000,
      idleTimeoutMs: options.idleTimeoutMs ?? 300_000,
      clock: this.clock,
      logger: this.logger,
      // An adopted inbox is processed like this node's own; the router exists by the time one is adopted.
      inbound: (frames) => this.router.receive(frames),
      isServing: () => this.state === "running" || this.state === "stopping",
      isRunning: () => this.state === "running",
    });
    this.router = new Router({
      nodeId: this.nodeId,
      membership: this.membership,
      outbox: this.outbox,
      actors: this.actors,
      placement: this.placement,
      asks: this.asks,
      logger: this.logger,
      isClosed: () => this.state === "stopped" || this.state === "aborted",
      drain: () => this.drain(),
      orphaned: (key, message) => this.orphaned(key, message),
    });
  }

  /** Registers the factory for keys `<kind>:<id>`. Call before `start`, identically on every node. */
  register(kind: string, factory: ActorFactory): this {
    this.actors.register(kind, factory);
    return this;
  }

  /**
   * Registers a pinned kind: `<kind>:<nodeId>` lives on node `nodeId` and is never handed off, so
   * other nodes can address a node itself (e.g. the gateway holding a device's socket). Sending to
   * a node that is not a live member fails with UnknownNodeError instead of waiting for it.
   *
   * `orphaned` hears each tell for `<kind>:<nodeId>` that reached this node while `nodeId` is not a
   * member, and is dropped: sent while it was one, it waited in its inbox, which this node adopted
   * when it took the node for dead (a heartbeat that lapsed under load, a crash). The sender was
   * told the transfer was confirmed and will not hear otherwise. Called with the message as sent;
   * a throw is logged and contained.
   */
  registerPinned(
    kind: string,
    factory: ActorFactory,
    options: { orphaned?: (message: unknown, nodeId: string) => void } = {},
  ): this {
    this.register(kind, factory);
    this.placement.pin(kind);
    if (options.orphaned) this.orphanListeners.set(kind, options.orphaned);
    return this;
  }

  private readonly orphanListeners = new Map<string, (message: unknown, nodeId: string) => void>();

  private orphaned(key: string, message: unknown): void {
    const colon = key.indexOf(":");
    const listener = this.orphanListeners.get(key.slice(0, colon));
    if (!listener) return;
    try {
      listener(message, key.slice(colon + 1));
    } catch (error) {
      this.logger.warn({ nodeId: this.nodeId, err: error }, "an orphaned-message listener failed");
    }
  }

  /** Opens this node's inbox, joins the membership, and waits for the first ring. */
  async start(): Promise<void> {
    if (this.state !== "new") throw new Error(`ActorSystem ${this.nodeId} was already started`);
    this.state = "running";
    await this.transport.start(this.router.receive, (error) => this.onTransportFatal(error));
    await this.placement.join(this.address, () => ({
      actors: this.actors.size,
      connections: this.connections(),
    }));
    this.placement.startMaintenance();
  }

  tell(key: string, message: unknown): Promise<void> {
    return this.router.route({ key, message, hops: 0 });
  }

  tellMany(keys: readonly string[], message: unknown): Promise<void> {
    return this.router.tellMany(keys, message);
  }

  ask<R = unknown>(key: string, message: unknown, options?: { timeoutMs?: number }): Promise<R> {
    return this.asks.request<R>(key, options?.timeoutMs ?? this.askTimeoutMs, (reply) =>
      this.router.route({ key, message, hops: 0, reply }),
    );
  }

  stopActor(key: string, reason = "stopped"): Promise<void> {
    return this.asks.request<void>(key, this.askTimeoutMs, (reply) =>
      this.router.route({ key, message: undefined, hops: 0, stop: reason, reply }),
    );
  }

  /** The node that owns `key` on this node's current ring. */
  ownerOf(key: string): string {
    return this.placement.ownerOf(key);
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

  /** False while the node-to-node transport has lost its broker (readiness); it reconnects by itself. */
  get transportConnected(): boolean {
    return this.transport.connected ?? true;
  }

  /**
   * Tells `listener` about nodes that went away without leaving, twice per crashed node: `expired`
   * when it turns up among the dead (its heartbeat key ran out while it stayed registered: a crash,
   * a freeze, a partition from Redis), `forgotten` when it leaves the dead list (a survivor adopted
   * its inbox and deleted it, which RabbitMQ allows only once no consumer of that node is left on
   * it: the broker has closed the node's connection and given back what it held unacked). A node
   * that leaves gracefully and takes itself off the registry is not reported; one that stops but
   * stays registered is (its inbox held survivors' handoff notices sent after it stopped consuming,
   * so RabbitMQ refused to delete it: seen in 10 of 12 runs of a four-node stop), under `left`, not
   * `expired`, when its leave announcement was heard (it was reported as expired, a death, before).
   * Only the nodes of
   * one membership change are passed (never this node), and a node off the dead list is reported
   * only by a node that saw it there. A listener's throw is contained. Returns the unsubscribe
   * function.
   */
  onNodesGone(listener: (gone: NodesGone) => void): () => void {
    let dead: ReadonlySet<string> = new Set();
    return this.membership.onChange((members) => {
      const nowDead = new Set(this.membership.deadNodes());
      const newlyDead = [...nowDead].filter((nodeId) => !dead.has(nodeId) && nodeId !== this.nodeId);
      const leftGracefully = newlyDead.length > 0 ? new Set(this.membership.leftNodes()) : new Set<string>();
      const expired = newlyDead.filter((nodeId) => !leftGracefully.has(nodeId));
      const left = newlyDead.filter((nodeId) => leftGracefully.has(nodeId));
      // Off the dead list and not back among the members.
      const forgotten = [...dead].filter(
        (nodeId) =>
          !nowDead.has(nodeId) && nodeId !== this.nodeId && !members.some((m) => m.nodeId === nodeId),
      );
      dead = nowDead;
      if (newlyDead.length === 0 && forgotten.length === 0) return;
      try {
        listener({ expired, left, forgotten });
      } catch (error) {
        this.logger.warn({ nodeId: this.nodeId, err: error }, "a gone-nodes listener failed");
      }
    });
  }

  /**
   * Tells `listener` about nodes that were in this node's view of the membership and are no longer,
   * however they went: a graceful leave (`Membership.leave` deletes the node's key, and with
   * `forget` its registry entry, which {@link onNodesGone} does not report), or a heartbeat key
   * that expired (reported there too, as `expired`). Each node once per departure (a node that
   * joins again is reported again when it goes), never this node; only changes after the call are
   * seen (the members at the call are the baseline). A listener's throw is contained. Returns the
   * unsubscribe function.
   */
  onMembersGone(listener: (nodeIds: readonly string[]) => void): () => void {
    let known: ReadonlySet<string> = new Set(this.membership.members().map((member) => member.nodeId));
    return this.membership.onChange((members) => {
      const now = new Set(members.map((member) => member.nodeId));
      const gone = [...known].filter((nodeId) => !now.has(nodeId) && nodeId !== this.nodeId);
      known = now;
      if (gone.length === 0) return;
      try {
        listener(gone);
      } catch (error) {
        this.logger.warn({ nodeId: this.nodeId, err: error }, "a gone-members listener failed");
      }
    });
  }

  /** Members of the current ring, sorted. */
  ringMembers(): readonly string[] {
    return this.placement.ring.members;
  }

  stats(): ActorSystemStats {
    const sent = this.outbox.counts;
    return {
      actors: this.actors.size,
      processed: this.router.processed,
      forwarded: this.router.forwarded,
      failures: this.failures,
      activations: this.actors.started,
      handedOff: this.placement.handedOff,
      ringMembers: this.placement.ring.members.length,
      transport: {
        transfersSent: sent.transfers,
        framesSent: sent.frames,
        transfersConfirmed: sent.confirmed,
        transfersFailed: sent.failed,
        transfersReceived: this.router.transfersReceived,
        framesReceived: this.router.framesReceived,
      },
    };
  }

  /** Active actors by kind (every registered kind, zeros included) and mailbox depths; O(actors). */
  census(): ActorCensus {
    return this.actors.census();
  }

  /** Members, their counts and the ring, for `GET /admin/v1/cluster`. */
  clusterView(): ClusterView {
    // The membership's latest read carries fresh heartbeat counts; the placement's view only tracks changes.
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
    const ring = this.placement.ring;
    return {
      self: this.nodeId,
      nodes,
      ring: { vnodes: ring.size, vnodesPerMember: this.vnodes, members: ring.members },
    };
  }

  /**
   * Drains `nodeId` (default: this node): it leaves the ring, hands every actor to its new owner
   * and keeps forwarding what still reaches it. For this node, resolves when the handoff is done.
   */
  async drain(nodeId: string = this.nodeId): Promise<void> {
    if (nodeId !== this.nodeId) {
      if (!this.placement.isMember(nodeId)) throw new UnknownNodeError(nodeId);
      await this.outbox.send(nodeId, { t: "drain", node: nodeId });
      return;
    }
    if (this.state !== "running" && this.state !== "stopping") return;
    await this.placement.leaveRing();
  }

  /**
   * Graceful shutdown: drain, passivate what is left, delete the inbox if empty, leave. Rejects with
   * the first step's error when one fails (the drain while Redis is away: the actors were not handed
   * off); the node is stopped all the same, its inbox consumer, membership and connections closed,
   * so nothing of it keeps running (a heartbeat re-registering a stopped node, a consumer taking
   * transfers for it).
   */
  async stop(): Promise<void> {
    if (this.state !== "running") return;
    this.state = "stopping";
    this.placement.stopMaintenance();
    let failure: unknown;
    const attempt = async (step: () => Promise<unknown>) => {
      try {
        await step();
      } catch (error) {
        failure ??= error;
      }
    };
    await attempt(() => this.drain());
    await Promise.all([...this.actors.values()].map((actor) => actor.passivate("shutdown")));
    let deleted = false;
    await attempt(async () => {
      deleted = await this.transport.stop();
    });
    this.state = "stopped";
    this.placement.unwatch();
    await attempt(() => this.membership.leave({ forget: deleted }));
    this.placement.releaseHeld();
    this.asks.rejectAll();
    if (failure !== undefined) throw failure;
  }

  /** Abrupt stop, as a crash: no handoff, no passivation, no goodbye; peers notice by TTL. */
  async abort(): Promise<void> {
    if (this.state === "stopped" || this.state === "aborted") return;
    this.state = "aborted";
    this.placement.stopMaintenance();
    this.placement.unwatch();
    this.actors.clear();
    await Promise.all([this.membership.abort(), this.transport.abort()]);
    this.asks.rejectAll();
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
    this.failures++;
    this.logger.warn({ nodeId: this.nodeId, key: actor.key, phase, err: error }, "actor failure");
    try {
      this.onFailure?.(actor.key, error, phase);
    } catch {
      // A failing observer must not turn a contained failure into an uncontained one.
    }
  }

  onStopped(actor: ActorType): void {
    this.actors.remove(actor);
  }

  private onTransportFatal(error: unknown): void {
    if (this.state !== "running") return;
    this.logger.error({ nodeId: this.nodeId, err: error }, "transport lost; leaving the cluster");
    void this.abort();
  }
}
