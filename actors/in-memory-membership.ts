import type { MemberInfo, MemberStats, MemberStatus, Membership, MembershipListener } from "./membership.ts";

interface HubEntry {
  info: MemberInfo;
  stats: () => MemberStats;
}

/** Shared registry for in-memory members; one per simulated cluster, never a module singleton. */
export class MembershipHub {
  readonly entries = new Map<string, HubEntry>();
  readonly known = new Set<string>();
  /** Nodes that left gracefully and stay known (`Membership.leftNodes`). */
  readonly left = new Set<string>();
  readonly listeners = new Set<() => void>();

  notify(): void {
    for (const listener of this.listeners) queueMicrotask(listener);
  }
}

/**
 * Membership without Redis: the embedded single-node default (a private hub), or several nodes in
 * one process sharing a hub. A crash (`abort`) is detected at once, there is no TTL to wait for.
 */
export class InMemoryMembership implements Membership {
  private readonly listeners = new Set<MembershipListener>();
  private joined = false;

  constructor(
    readonly self: string,
    private readonly hub: MembershipHub = new MembershipHub(),
  ) {}

  async join(info: { address: string; status?: MemberStatus }, stats: () => MemberStats): Promise<void> {
    const member: MemberInfo = {
      nodeId: this.self,
      address: info.address,
      status: info.status ?? "up",
      actors: 0,
      connections: 0,
      startedAt: Date.now(),
    };
    this.hub.entries.set(this.self, { info: member, stats });
    this.hub.known.add(this.self);
    this.hub.left.delete(this.self);
    this.hub.listeners.add(this.emit);
    this.joined = true;
    this.hub.notify();
  }

  async setStatus(status: MemberStatus): Promise<void> {
    const entry = this.hub.entries.get(this.self);
    if (!entry || entry.info.status === status) return;
    entry.info.status = status;
    this.hub.notify();
    await Promise.resolve();
  }

  members(): readonly MemberInfo[] {
    return [...this.hub.entries.values()].map(({ info, stats }) => ({ ...info, ...stats() }));
  }

  deadNodes(): readonly string[] {
    return [...this.hub.known].filter((id) => !this.hub.entries.has(id));
  }

  leftNodes(): readonly string[] {
    return this.deadNodes().filter((id) => this.hub.left.has(id));
  }

  async forget(nodeId: string): Promise<void> {
    if (this.hub.entries.has(nodeId)) return;
    this.hub.known.delete(nodeId);
    this.hub.left.delete(nodeId);
  }

  async refresh(): Promise<void> {
    if (this.joined) this.emit();
  }

  onChange(listener: MembershipListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async leave(options?: { forget?: boolean }): Promise<void> {
    this.detach();
    if (options?.forget) this.hub.known.delete(this.self);
    else this.hub.left.add(this.self);
    this.hub.notify();
  }

  async abort(): Promise<void> {
    this.detach();
    this.hub.notify();
  }

  private detach(): void {
    this.joined = false;
    this.hub.entries.delete(this.self);
    this.hub.listeners.delete(this.emit);
  }

  private readonly emit = (): void => {
    if (!this.joined) return;
    const members = this.members();
    for (const listener of this.listeners) listener(members);
  };
}
