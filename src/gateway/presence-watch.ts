import type { Presence, PresenceState } from "../messaging/presence.ts";
import type { DeviceConnection } from "./connection.ts";

/** What a watcher must hear about: going online, or going offline (with when). Lease renewals are not news. */
function presenceSignature(state: PresenceState): string {
  return state.online ? "online" : `offline:${state.lastSeen}`;
}

/** Watch entries (socket, watched user) this node holds at most, unless configured otherwise. */
export const DEFAULT_NODE_WATCH_LIMIT = 500_000;

/** How much of this node's memory the watch lists take. */
export interface WatchStats {
  /** Users watched by at least one socket here. */
  users: number;
  /** (socket, user) pairs: the sum of every socket's watch list. */
  entries: number;
  /** Users whose last reported state is remembered (never more than `users`). */
  remembered: number;
}

/**
 * The `presence.watch` lists of this node's sockets: who watches whom, and the last state each
 * watched user was reported in, so that only changes are sent. Bounded: a socket's list is at most
 * the protocol's 1,000 users (the frame schema) and the node holds at most `nodeLimit` entries in
 * all; a user nobody here watches any more is forgotten at once, with its remembered state.
 */
export class PresenceWatchers {
  private readonly watchers = new Map<string, Set<DeviceConnection>>();
  private readonly lastPresence = new Map<string, string>();
  private entries = 0;

  constructor(
    private readonly presence: Presence,
    private readonly nodeLimit: number = DEFAULT_NODE_WATCH_LIMIT,
  ) {}

  /**
   * Replaces the socket's watch list and answers at once with every named user's state. Returns
   * false, keeping the old list, when the new one would take the node past its limit.
   */
  async watch(conn: DeviceConnection, users: readonly string[]): Promise<boolean> {
    const list = new Set(users);
    if (this.entries - conn.watching.size + list.size > this.nodeLimit) return false;
    this.unwatch(conn);
    for (const user of list) {
      conn.watching.add(user);
      let set = this.watchers.get(user);
      if (!set) {
        set = new Set();
        this.watchers.set(user, set);
      }
      set.add(conn);
    }
    this.entries += list.size;
    const states = await this.presence.states([...list]);
    for (const state of states) {
      // Meanwhile the socket may have closed or replaced its list: remember and report only what is still watched.
      if (!this.watchers.has(state.user)) continue;
      this.lastPresence.set(state.user, presenceSignature(state));
      if (conn.watching.has(state.user)) conn.send({ type: "presence", ...state });
    }
    return true;
  }

  /** Drops the socket's watch list (a new list, or the socket closed), and every user nobody watches any more. */
  unwatch(conn: DeviceConnection): void {
    for (const user of conn.watching) {
      const set = this.watchers.get(user);
      if (!set?.delete(conn)) continue;
      this.entries--;
      if (set.size === 0) {
        this.watchers.delete(user);
        this.lastPresence.delete(user);
      }
    }
    conn.watching.clear();
  }

  /** A user's presence changed (from any node): tell the watchers here, if it is news. */
  changed(state: PresenceState): void {
    const watchers = this.watchers.get(state.user);
    if (!watchers) return;
    const signature = presenceSignature(state);
    if (this.lastPresence.get(state.user) === signature) return;
    this.lastPresence.set(state.user, signature);
    for (const conn of watchers) conn.send({ type: "presence", ...state });
  }

  /** Re-reads every watched user's state: a crashed node's leases expire without an announcement. */
  async refresh(): Promise<void> {
    for (const state of await this.presence.states([...this.watchers.keys()])) this.changed(state);
  }

  /** Current sizes, for tests and metrics. */
  stats(): WatchStats {
    return { users: this.watchers.size, entries: this.entries, remembered: this.lastPresence.size };
  }
}
