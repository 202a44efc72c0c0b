import {
  type DeviceSocketRef,
  leaseMember,
  type Presence,
  type PresenceState,
  parseLeaseMember,
} from "./presence.ts";

/** Single-node presence for the embedded default: socket leases and last-seen times in memory. */
export class MemoryPresence implements Presence {
  readonly kind = "memory";
  /** userId → lease member → expiry (ms). */
  private readonly leases = new Map<string, Map<string, number>>();
  private readonly lastSeen = new Map<string, number>();
  private readonly listeners = new Set<(state: PresenceState) => void>();

  constructor(
    private readonly leaseMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  private live(userId: string): string[] {
    const now = this.now();
    return [...(this.leases.get(userId) ?? [])]
      .filter(([, expiry]) => expiry > now)
      .map(([member]) => member);
  }

  private state(user: string): PresenceState {
    return { user, online: this.live(user).length > 0, lastSeen: this.lastSeen.get(user) ?? 0 };
  }

  private publish(state: PresenceState) {
    for (const listener of this.listeners) listener(state);
  }

  async connected(sockets: DeviceSocketRef[]): Promise<void> {
    const now = this.now();
    for (const socket of sockets) {
      const wasOnline = this.live(socket.userId).length > 0;
      let leases = this.leases.get(socket.userId);
      if (!leases) {
        leases = new Map();
        this.leases.set(socket.userId, leases);
      }
      leases.set(leaseMember(socket), now + this.leaseMs);
      this.lastSeen.set(socket.userId, now);
      if (!wasOnline) this.publish(this.state(socket.userId));
    }
  }

  async disconnected(socket: DeviceSocketRef): Promise<void> {
    const leases = this.leases.get(socket.userId);
    if (!leases?.delete(leaseMember(socket))) return;
    if (leases.size === 0) this.leases.delete(socket.userId);
    this.lastSeen.set(socket.userId, this.now());
    const state = this.state(socket.userId);
    if (!state.online) this.publish(state);
  }

  async sockets(userId: string): Promise<DeviceSocketRef[]> {
    return this.live(userId).flatMap((m) => parseLeaseMember(userId, m) ?? []);
  }

  async states(userIds: string[]): Promise<PresenceState[]> {
    return userIds.map((u) => this.state(u));
  }

  subscribe(listener: (state: PresenceState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async eraseUser(userId: string): Promise<number> {
    return (this.leases.delete(userId) ? 1 : 0) + (this.lastSeen.delete(userId) ? 1 : 0);
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
