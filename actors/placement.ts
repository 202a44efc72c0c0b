import type { Activations } from "./activations.ts";
import { HandoffGate, type HeldEnvelope } from "./handoff-gate.ts";
import type { Logger } from "./logger.ts";
import type { MemberInfo, MemberStats, Membership } from "./membership.ts";
import type { Outbox } from "./outbox.ts";
import type { Clock } from "./ports.ts";
import { Ring } from "./ring.ts";
import type { FrameHandler, HandoffFrame, Transport } from "./transport.ts";

/** What {@link Placement} needs from the node it places actors for. */
export interface PlacementOptions {
  nodeId: string;
  membership: Membership;
  transport: Transport;
  outbox: Outbox;
  actors: Activations;
  /** Virtual nodes per member; equal on every node. */
  vnodes: number;
  /** Longest wait for a previous owner's handoff notice, in milliseconds. */
  handoffTimeoutMs: number;
  /** Passivate an actor idle this many milliseconds; 0 disables. */
  idleTimeoutMs: number;
  clock: Clock;
  logger: Logger;
  /** Processes the transfers of an adopted dead node's inbox, like this node's own. */
  inbound: FrameHandler;
  /** True while the node is running or stopping: membership views still move actors. */
  isServing: () => boolean;
  /** True while the node is running: only then does it adopt dead nodes' inboxes. */
  isRunning: () => boolean;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** How often a dead node's inbox adoption is retried and idle actors are swept. */
const MAINTENANCE_MS = 1000;
/** Rings ahead of this node's whose handoff notices it keeps, waiting to reach them. */
const MAX_EARLY_NOTICES = 8;

/**
 * Where actors live: the ring built from the membership view, who owns a key, the handoff when
 * the ring changes (passivate what moved away, notify peers, hold what arrives for keys whose
 * previous owner has not let go yet), adoption of a dead node's inbox, and the maintenance sweep
 * that retries adoptions and passivates idle actors. Pinned kinds (`<kind>:<nodeId>`) are never
 * placed by the ring.
 */
/** ':' (a key's kind ends at its first colon). */
const COLON = 0x3a;

export class Placement {
  private readonly nodeId: string;
  private readonly membership: Membership;
  private readonly gate: HandoffGate;
  /** Kinds whose key names the node they live on (`<kind>:<nodeId>`); the ring never moves them. */
  private readonly pinnedKinds = new Set<string>();
  private readonly adopting = new Set<string>();
  private currentRing: Ring;
  private members: readonly MemberInfo[] = [];
  private firstView = true;
  private markReady!: () => void;
  /** Resolves once the first ring is known; nothing is routed before that. */
  readonly ready = new Promise<void>((resolve) => {
    this.markReady = resolve;
  });
  private handoffs: Promise<void> = RESOLVED;
  /** Keys named by handoff notices for a ring this node had not reached, by that ring's fingerprint. */
  private readonly earlyNotices = new Map<string, string[]>();
  /** Actors this node passivated and handed to a new owner after a ring change, since start (metrics). */
  handedOff = 0;
  private maintenance: ReturnType<typeof setInterval> | undefined;
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly options: PlacementOptions) {
    this.nodeId = options.nodeId;
    this.membership = options.membership;
    this.currentRing = new Ring([], options.vnodes);
    this.gate = new HandoffGate(this.nodeId, options.handoffTimeoutMs, (from) =>
      options.logger.warn({ nodeId: this.nodeId, from }, "handoff timed out; activating without it"),
    );
  }

  /** The ring this node routes by. */
  get ring(): Ring {
    return this.currentRing;
  }

  /** Marks `kind` as pinned: `<kind>:<nodeId>` lives on `nodeId`. */
  pin(kind: string): void {
    this.pinnedKinds.add(kind);
  }

  /** The node a pinned key names, or undefined for ring-placed keys. */
  pinnedNode(key: string): string | undefined {
    if (this.pinnedKinds.size === 0) return undefined;
    // Asked for every message routed (twice per 1:1 send and per ack): compares the key's prefix
    // with each pinned kind in place rather than slicing the kind out of every key.
    for (const kind of this.pinnedKinds) {
      if (key.length > kind.length && key.charCodeAt(kind.length) === COLON && key.startsWith(kind)) {
        return key.slice(kind.length + 1);
      }
    }
    return undefined;
  }

  /** The node that owns `key` on this node's current ring (this node while the ring is empty). */
  ownerOf(key: string): string {
    return this.pinnedNode(key) ?? this.currentRing.ownerOf(key) ?? this.nodeId;
  }

  /** True when `nodeId` is in the latest membership view (up or draining). */
  isMember(nodeId: string): boolean {
    return this.members.some((member) => member.nodeId === nodeId);
  }

  /** True when a message for a ring-placed `key` must wait for the key's previous owner to let go. */
  mustHold(key: string): boolean {
    return this.pinnedNode(key) === undefined && this.gate.mustHold(key);
  }

  /** Holds a message until the key's previous owner has let go (or the handoff timeout passes). */
  hold(envelope: HeldEnvelope): void {
    this.gate.hold(envelope);
  }

  /** Subscribes to the membership, joins it, and resolves once the first ring is known. */
  async join(address: string, stats: () => MemberStats): Promise<void> {
    this.unsubscribe = this.membership.onChange((members) => this.onMembers(members));
    await this.membership.join({ address }, stats);
    if (this.firstView) this.onMembers(this.membership.members());
    await this.ready;
  }

  /** Stops following membership changes. */
  unwatch(): void {
    this.unsubscribe?.();
  }

  /** Takes this node off the ring (status `draining`) and resolves once its actors are handed off. */
  async leaveRing(): Promise<void> {
    await this.membership.setStatus("draining");
    if (this.currentRing.has(this.nodeId)) this.onMembers(this.membership.members());
    await this.handoffs;
  }

  /** Releases every held message and forgets all handoff waits (shutdown). */
  releaseHeld(): void {
    this.gate.clear();
  }

  /**
   * A previous owner announced it let go of everything that moved in ring `frame.ring`: release
   * what waited for it and eagerly reactivate the keys it names that this node owns, now or, for
   * a notice that came before this node's own view of that ring, once its ring is that one.
   */
  onHandoffNotice(frame: HandoffFrame): void {
    this.gate.noticeFrom(frame.from, frame.ring);
    if (frame.ring !== this.currentRing.fingerprint && frame.keys.length > 0) {
      // Sent for a ring this node has not reached yet (the sender read the membership first): the
      // keys are not ours yet, so they are reactivated when our ring becomes that one.
      const keys = this.earlyNotices.get(frame.ring);
      if (keys) keys.push(...frame.keys);
      else this.earlyNotices.set(frame.ring, [...frame.keys]);
      // Notices for rings this node never reaches are dropped, oldest first.
      if (this.earlyNotices.size > MAX_EARLY_NOTICES)
        this.earlyNotices.delete(this.earlyNotices.keys().next().value as string);
    }
    this.reactivate(frame.keys);
  }

  /** Activates the handed-off `keys` this node owns and has no activation or held messages for. */
  private reactivate(keys: readonly string[]): void {
    const { actors, logger } = this.options;
    for (const key of keys) {
      if (this.ownerOf(key) !== this.nodeId || actors.has(key) || this.gate.mustHold(key)) continue;
      try {
        actors.activate(key);
      } catch (error) {
        logger.warn({ key, err: error }, "could not reactivate handed-off actor");
      }
    }
  }

  /** Starts the periodic sweep: adoption retries and idle passivation. */
  startMaintenance(): void {
    this.maintenance = setInterval(() => this.maintain(), Math.min(MAINTENANCE_MS, this.sweepInterval()));
    this.maintenance.unref?.();
  }

  stopMaintenance(): void {
    if (this.maintenance) clearInterval(this.maintenance);
    this.maintenance = undefined;
  }

  private ringFor(members: readonly MemberInfo[]): Ring {
    const up = members.filter((member) => member.status === "up");
    // With every member draining there is nowhere to hand off to: keep serving.
    return new Ring(
      (up.length > 0 ? up : members).map((member) => member.nodeId),
      this.options.vnodes,
    );
  }

  private onMembers(members: readonly MemberInfo[]): void {
    if (!this.options.isServing()) return;
    this.members = members;
    const alive = new Set(members.map((member) => member.nodeId));
    const next = this.ringFor(members);
    if (this.firstView || next.fingerprint !== this.currentRing.fingerprint) {
      // A joining node waits for everyone who owned its keys before it existed.
      const previous = this.firstView
        ? this.ringFor(members.filter((member) => member.nodeId !== this.nodeId))
        : this.currentRing;
      this.firstView = false;
      this.currentRing = next;
      this.gate.ringChanged(previous, next, alive);
      const early = this.earlyNotices.get(next.fingerprint);
      if (early) {
        this.earlyNotices.delete(next.fingerprint);
        this.reactivate(early);
      }
      this.options.logger.info({ nodeId: this.nodeId, ring: next.members }, "ring changed");
      this.handoffs = this.handoffs
        .then(() => this.handOff(next, alive))
        .catch((error: unknown) => this.options.logger.error({ err: error }, "handoff failed"));
      this.markReady();
    }
    this.adoptDeadNodes();
  }

  /** Passivates the actors that moved away, then tells every peer it may activate what it gained. */
  private async handOff(next: Ring, alive: ReadonlySet<string>): Promise<void> {
    const moving = [...this.options.actors.values()].filter(
      (actor) => this.pinnedNode(actor.key) === undefined && next.ownerOf(actor.key) !== this.nodeId,
    );
    await Promise.all(moving.map((actor) => actor.passivate("handoff")));
    this.handedOff += moving.length;
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
      notices.push(this.options.outbox.send(peer, frame).catch(() => undefined));
    }
    await Promise.all(notices);
    if (moving.length > 0)
      this.options.logger.info({ nodeId: this.nodeId, actors: moving.length }, "handed actors off");
  }

  /** The survivor owning `node:<dead>` on the ring drains the dead node's inbox, then forgets it. */
  private adoptDeadNodes(): void {
    const { isRunning, logger } = this.options;
    if (!isRunning()) return;
    for (const dead of this.membership.deadNodes()) {
      if (dead === this.nodeId || this.adopting.has(dead)) continue;
      if (this.currentRing.ownerOf(`node:${dead}`) !== this.nodeId) continue;
      this.adopting.add(dead);
      // A graceful stop whose inbox was not empty, or a crash: said apart in the log.
      const left = this.membership.leftNodes().includes(dead);
      const cameBack = () => !isRunning() || this.isMember(dead);
      this.options.transport
        .adopt(dead, this.options.inbound, cameBack)
        .then(async (deleted) => {
          if (!deleted) return;
          await this.membership.forget(dead);
          if (left)
            logger.info(
              { nodeId: this.nodeId, left: dead },
              "adopted and removed the inbox a node that left kept",
            );
          else logger.info({ nodeId: this.nodeId, dead }, "adopted and removed a dead node's inbox");
        })
        .catch((error: unknown) => logger.warn({ dead, err: error }, "adoption failed"))
        .finally(() => this.adopting.delete(dead));
    }
  }

  private sweepInterval(): number {
    const { idleTimeoutMs } = this.options;
    return idleTimeoutMs > 0 ? Math.max(50, idleTimeoutMs / 2) : MAINTENANCE_MS;
  }

  private maintain(): void {
    this.adoptDeadNodes();
    const { idleTimeoutMs } = this.options;
    if (idleTimeoutMs <= 0) return;
    const now = this.options.clock.now();
    for (const actor of this.options.actors.values()) {
      if (actor.status === "active" && actor.idle && now - actor.lastActive >= idleTimeoutMs) {
        void actor.passivate("idle");
      }
    }
  }
}
