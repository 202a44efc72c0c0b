import type { Ring } from "./ring.ts";

/** A message held on its new owner until the previous owner confirms it has let go of the actor. */
export interface HeldEnvelope {
  key: string;
  /** Node-to-node forwards so far: 1 straight from the sender's node, 2+ through another node. */
  hops: number;
  release: () => void;
}

interface Awaited {
  fingerprint: string;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * The new owner's side of a handoff. After a ring change, messages for keys whose previous owner is
 * still alive are held until that owner announces (a `handoff` frame for the same ring) that it
 * has passivated everything that moved, so an actor is never active on two nodes at once.
 * A previous owner that stays silent is given up on after a timeout: delay, never loss.
 */
export class HandoffGate {
  private readonly awaiting = new Map<string, Awaited>();
  private readonly notices = new Map<string, string>();
  private previous: Ring | undefined;
  private held: HeldEnvelope[] = [];

  constructor(
    private readonly self: string,
    private readonly timeoutMs: number,
    private readonly onTimeout: (nodeId: string) => void,
  ) {}

  /** Nodes we still wait for. */
  get pending(): readonly string[] {
    return [...this.awaiting.keys()];
  }

  /** Starts waiting for every still-alive member of `previous` that has not yet announced `next`. */
  ringChanged(previous: Ring, next: Ring, alive: ReadonlySet<string>): void {
    this.previous = previous;
    for (const member of previous.members) {
      if (member === this.self || !alive.has(member)) continue;
      if (this.notices.get(member) === next.fingerprint) continue;
      const existing = this.awaiting.get(member);
      if (existing) clearTimeout(existing.timer);
      const timer = setTimeout(() => {
        this.onTimeout(member);
        this.settle(member);
      }, this.timeoutMs);
      timer.unref?.();
      this.awaiting.set(member, { fingerprint: next.fingerprint, timer });
    }
    // A member that died while we waited for it will never announce: stop waiting.
    for (const member of [...this.awaiting.keys()]) if (!alive.has(member)) this.settle(member);
  }

  /** Records `from`'s announcement; releases what waited for it if it matches the ring we expect. */
  noticeFrom(from: string, fingerprint: string): void {
    this.notices.set(from, fingerprint);
    if (this.awaiting.get(from)?.fingerprint === fingerprint) this.settle(from);
  }

  /** True when a message for `key` must wait for its previous owner. */
  mustHold(key: string): boolean {
    if (this.awaiting.size === 0 || !this.previous) return false;
    const owner = this.previous.ownerOf(key);
    return owner !== undefined && owner !== this.self && this.awaiting.has(owner);
  }

  /** Holds a message until its previous owner settles. */
  hold(envelope: HeldEnvelope): void {
    this.held.push(envelope);
  }

  /** Releases everything and forgets all waits (shutdown). */
  clear(): void {
    for (const { timer } of this.awaiting.values()) clearTimeout(timer);
    this.awaiting.clear();
    this.releaseWhere(() => true);
  }

  private settle(member: string): void {
    const entry = this.awaiting.get(member);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.awaiting.delete(member);
    this.releaseWhere((held) => !this.mustHold(held.key));
  }

  /**
   * Re-forwarded messages go first: a sender's messages that went through the previous owner were
   * sent before that sender saw the new ring, so this keeps each sender's order.
   */
  private releaseWhere(free: (held: HeldEnvelope) => boolean): void {
    const released = this.held.filter(free);
    if (released.length === 0) return;
    this.held = this.held.filter((held) => !free(held));
    const forwarded = released.filter((held) => held.hops >= 2);
    const direct = released.filter((held) => held.hops < 2);
    for (const held of forwarded) held.release();
    for (const held of direct) held.release();
  }
}
