import type { Activations } from "./activations.ts";
import type { DeliveryDone } from "./actor.ts";
import { MailboxFullError, NodeStoppedError, UnknownNodeError, UnroutableError } from "./actor-error.ts";
import type { PendingAsks } from "./asks.ts";
import type { Logger } from "./logger.ts";
import type { Membership } from "./membership.ts";
import type { Outbox } from "./outbox.ts";
import type { Placement } from "./placement.ts";
import type { EnvelopeFrame, Frame, ReplyTo } from "./transport.ts";

/** One message on its way to one actor. */
export interface Envelope {
  key: string;
  message: unknown;
  /** Node-to-node forwards so far. */
  hops: number;
  reply?: ReplyTo;
  /** Set for a stop command (erasure) rather than a message: the reason. */
  stop?: string;
  /** Set for envelopes that came over the transport: called once processed or passed on. */
  settle?: () => void;
}

/** What {@link Router} needs from the node it routes for. */
export interface RouterOptions {
  nodeId: string;
  membership: Membership;
  outbox: Outbox;
  actors: Activations;
  placement: Placement;
  asks: PendingAsks;
  logger: Logger;
  /** True once the node stopped or aborted: nothing is routed any more. */
  isClosed: () => boolean;
  /** Drains this node (a `drain` frame addressed to it arrived). */
  drain: () => Promise<void>;
  /**
   * Hears a tell for a pinned actor of a node that is not a member, which reached this node (an
   * inbox adopted from a node taken for dead) and is dropped (ActorSystem.registerPinned's
   * `orphaned`). Asks are answered UnknownNodeError instead.
   */
  orphaned?: (key: string, message: unknown) => void;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Forwards after which a message is slowed down: rings disagree and must converge first. */
const BOUNCE_LIMIT = 8;
const BOUNCE_DELAY_MS = 100;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Moves envelopes to their actors: into the local activation's mailbox when this node owns the
 * key (activating it on its first message, holding it while a handoff is pending), otherwise to
 * the owner's inbox through the outbox; re-routes when the owner's inbox is gone, slows down
 * messages that bounce between nodes with disagreeing rings, and dispatches inbound transfers.
 */
export class Router {
  /** Messages processed by local actors. */
  processed = 0;
  /** Envelopes passed on to another node. */
  forwarded = 0;
  /** Transfers taken from this node's inbox (or an adopted one), and the frames they held. */
  transfersReceived = 0;
  framesReceived = 0;

  constructor(private readonly options: RouterOptions) {}

  /** Delivers an envelope to wherever its key lives; resolves when accepted there. */
  route(envelope: Envelope): Promise<void> {
    const { nodeId, placement } = this.options;
    if (this.options.isClosed()) return Promise.reject(new NodeStoppedError(nodeId));
    const owner = placement.ownerOf(envelope.key);
    if (owner === nodeId) return this.deliverLocal(envelope);
    if (placement.pinnedNode(envelope.key) !== undefined && !placement.isMember(owner)) {
      return Promise.reject(new UnknownNodeError(owner));
    }
    return this.forward(owner, envelope);
  }

  /** The same message to many keys: local keys go to their mailboxes, one transfer per other owner. */
  tellMany(keys: readonly string[], message: unknown): Promise<void> {
    const { nodeId, placement, outbox } = this.options;
    const remote = new Map<string, string[]>();
    const waits: Promise<void>[] = [];
    for (const key of keys) {
      const owner = placement.ownerOf(key);
      if (owner === nodeId) {
        waits.push(this.deliverLocal({ key, message, hops: 0 }));
        continue;
      }
      const group = remote.get(owner);
      if (group) group.push(key);
      else remote.set(owner, [key]);
    }
    for (const [owner, group] of remote) {
      const frame: EnvelopeFrame = { t: "env", keys: group, msg: message, hops: 1 };
      this.forwarded += group.length;
      waits.push(
        outbox.send(owner, frame).catch((error: unknown) => {
          if (!(error instanceof UnroutableError)) throw error;
          return Promise.all(group.map((key) => this.reroute({ key, message, hops: 1 }, owner))).then(
            () => {},
          );
        }),
      );
    }
    return Promise.all(waits).then(() => {});
  }

  /** Processes one transfer from this node's inbox (or an adopted one); resolves when it may be acked. */
  readonly receive = async (frames: Frame[]): Promise<void> => {
    const { placement, asks, logger } = this.options;
    this.transfersReceived++;
    this.framesReceived += frames.length;
    await placement.ready;
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
          asks.onReplyFrame(frame);
          break;
        case "handoff":
          placement.onHandoffNotice(frame);
          break;
        case "drain":
          // A drain addressed to a dead node reaches its adopter: it is not for us.
          if (frame.node === this.options.nodeId) {
            this.options.drain().catch((error: unknown) => logger.error({ err: error }, "drain failed"));
          }
          break;
      }
    }
    await Promise.all(pending);
  };

  private deliverLocal(envelope: Envelope): Promise<void> {
    const { actors, placement } = this.options;
    if (placement.mustHold(envelope.key)) {
      return new Promise((resolve, reject) => {
        placement.hold({
          key: envelope.key,
          hops: envelope.hops,
          release: () => void this.route(envelope).then(resolve, reject),
        });
      });
    }
    let actor = actors.get(envelope.key);
    if (envelope.stop !== undefined) {
      const stopped = actor ? actor.stop(envelope.stop) : RESOLVED;
      stopped.then(() => this.complete(envelope, undefined, undefined));
      return RESOLVED;
    }
    if (!actor) {
      try {
        actor = actors.activate(envelope.key);
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
    this.processed++;
  };

  private complete(envelope: Envelope, error: unknown, value: unknown): void {
    this.processed++;
    if (envelope.reply) this.options.asks.reply(envelope.reply, error, value);
    envelope.settle?.();
  }

  private forward(owner: string, envelope: Envelope): Promise<void> {
    if (envelope.hops >= BOUNCE_LIMIT) {
      const { nodeId, placement } = this.options;
      return sleep(BOUNCE_DELAY_MS)
        .then(() => this.options.membership.refresh())
        .then(() => {
          const now = placement.ownerOf(envelope.key);
          return now === nodeId ? this.deliverLocal(envelope) : this.send(now, envelope);
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
    this.forwarded++;
    return this.options.outbox.send(owner, frame).then(
      () => envelope.settle?.(),
      (error: unknown) => {
        if (error instanceof UnroutableError) return this.reroute(envelope, owner);
        throw error;
      },
    );
  }

  /** The owner's inbox is gone (it left or died and was adopted): wait until the ring drops it. */
  private async reroute(envelope: Envelope, goneOwner: string): Promise<void> {
    const { membership, placement, isClosed } = this.options;
    await membership.refresh().catch(() => undefined);
    while (placement.ownerOf(envelope.key) === goneOwner && !isClosed()) {
      await sleep(BOUNCE_DELAY_MS);
      await membership.refresh().catch(() => undefined);
    }
    return this.route(envelope);
  }

  /** Resolves once the envelope was processed here or confirmed on its way to the owner. */
  private routeInbound(envelope: Envelope): Promise<void> {
    return new Promise((resolve) => {
      envelope.settle = resolve;
      this.route(envelope).catch((error: unknown) => {
        // A stopped node leaves the transfer unacknowledged so the broker gives it to a survivor.
        if (this.options.isClosed()) return;
        this.options.logger.warn(
          { nodeId: this.options.nodeId, key: envelope.key, err: error },
          "envelope refused",
        );
        if (envelope.reply) this.options.asks.reply(envelope.reply, error, undefined);
        else if (error instanceof UnknownNodeError) this.options.orphaned?.(envelope.key, envelope.message);
        resolve();
      });
    });
  }
}
