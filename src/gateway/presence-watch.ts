import type { Presence, PresenceState } from "../messaging/presence.ts";
import type { DeviceConnection } from "./connection.ts";

/** What a watcher must hear about: going online, or going offline (with when). Lease renewals are not news. */
function presenceSignature(state: PresenceState): string {
  return state.online ? "online" : `offline:${state.lastSeen}`;
}

/**
 * The `presence.watch` lists of this node's sockets: who watches whom, and the last state each
 * watched user was reported in, so that only changes are sent.
 */
export class PresenceWatchers {
  private readonly watchers = new Map<string, Set<DeviceConnection>>();
  private readonly lastPresence = new Map<string, string>();

  constructor(private readonly presence: Presence) {}

  /** Replaces the socket's watch list and answers at once with every named user's state. */
  async watch(conn: DeviceConnection, users: string[]): Promise<void> {
    this.unwatch(conn);
    for (const user of users) {
      conn.watching.add(user);
      let set = this.watchers.get(user);
      if (!set) {
        set = new Set();
        this.watchers.set(user, set);
      }
      set.add(conn);
    }
    for (const state of await this.presence.states(users)) {
      this.lastPresence.set(state.user, presenceSignature(state));
      conn.send({ type: "presence", ...state });
    }
  }

  /** Drops the socket's watch list (a new list, or the socket closed). */
  unwatch(conn: DeviceConnection): void {
    for (const user of conn.watching) this.watchers.get(user)?.delete(conn);
    conn.watching.clear();
  }

  /** A user's presence changed (from any node): tell the watchers here, if it is news. */
  changed(state: PresenceState): void {
    const watchers = this.watchers.get(state.user);
    if (!watchers || watchers.size === 0) return;
    const signature = presenceSignature(state);
    if (this.lastPresence.get(state.user) === signature) return;
    this.lastPresence.set(state.user, signature);
    for (const conn of watchers) conn.send({ type: "presence", ...state });
  }

  /** Re-reads every watched user's state: a crashed node's leases expire without an announcement. */
  async refresh(): Promise<void> {
    const watched = [...this.watchers.keys()].filter((u) => (this.watchers.get(u)?.size ?? 0) > 0);
    for (const state of await this.presence.states(watched)) this.changed(state);
  }
}
