import type { Presence, PresenceState } from "../messaging/presence.ts";
import type { DeviceConnection } from "./connection.ts";

/** What a watcher must hear about: going online, or going offline (with when). Lease renewals are not news. */
function presenceSignature(state: PresenceState): string {
  return state.online ? "online" : `offline:${state.lastSeen}`;
}

/** Watch entries (socket, watched user) this node holds at most, unless configured otherwise. */
export const DEFAULT_NODE_WATCH_LIMIT = 500_000;

/**
 * Watch entries one account's sockets hold on one node at most, unless configured otherwise: five
 * devices' full lists. Without it one account (up to 127 devices, each list up to 1,000 users) could
 * take a quarter of the node's entries, and four accounts all of them, refusing everyone else's.
 */
export const DEFAULT_ACCOUNT_WATCH_LIMIT = 5_000;

/** Why a watch list was refused: it would pass the node's bound or the account's share of it. */
export type WatchRefusal = "node" | "account";

/** How much of this node's memory the watch lists take. */
export interface WatchStats {
  /** Users watched by at least one socket here. */
  users: number;
  /** (socket, user) pairs: the sum of every socket's watch list. */
  entries: number;
  /** Users whose last reported state is remembered (never more than `users`). */
  remembered: number;
}

/** Who may see whose presence: `groups/relations.ts`'s PresenceAudience. */
export interface Audience {
  /** Of `users`, those `watcher` may see. */
  visibleTo(watcher: string, users: readonly string[]): Promise<Set<string>>;
}

/** Everyone sees everyone (a node built without the relation rule: tests of the watch mechanics only). */
const EVERYONE: Audience = { visibleTo: async (_watcher, users) => new Set(users) };

/** How a user the watcher may not see is reported: like an account that was never online. */
const unseen = (user: string) => ({ type: "presence" as const, user, online: false, lastSeen: 0 });

/**
 * The `presence.watch` lists of this node's sockets: who watches whom, and the last state each
 * watched user was reported in, so that only changes are sent. Bounded: a socket's list is at most
 * the protocol's 1,000 users (the frame schema), one account's sockets hold at most `accountLimit`
 * entries here, and the node holds at most `nodeLimit` entries in all; a user nobody here watches any more is forgotten at once, with its remembered state.
 *
 * Presence goes only to related users (`Audience`, docs/PROTOCOL.md "Presence"): a named user the
 * watcher may not see is answered once as offline and never seen (`lastSeen: 0`, as for an account
 * that never connected, so the answer does not tell whether the id exists) and their changes are
 * not sent. The entry still counts against the bounds, as any named user does. Visibility is
 * re-evaluated by `recheck` (relations changed on this node) and `refresh` (every lease renewal),
 * so a relation that ends (leaving a group, a block) stops the updates, and one that begins
 * (accepting an invitation) starts them, without a new watch list.
 */
export class PresenceWatchers {
  private readonly watchers = new Map<string, Set<DeviceConnection>>();
  private readonly lastPresence = new Map<string, string>();
  /** Sockets with a watch list, by their user: whose lists a relation change of that user touches. */
  private readonly byOwner = new Map<string, Set<DeviceConnection>>();
  /** Entries per account (the sum of its sockets' lists here), for the account bound. */
  private readonly ownerEntries = new Map<string, number>();
  private entries = 0;
  private rechecking = false;

  constructor(
    private readonly presence: Presence,
    private readonly nodeLimit: number = DEFAULT_NODE_WATCH_LIMIT,
    private readonly audience: Audience = EVERYONE,
    private readonly accountLimit: number = DEFAULT_ACCOUNT_WATCH_LIMIT,
  ) {}

  /**
   * Replaces the socket's watch list and answers at once with every named user's state (unseen
   * users as offline, never seen). Resolves undefined when the list was taken; "node" or "account",
   * keeping the old list, when the new one would take the node past `nodeLimit` entries or the
   * socket's account past `accountLimit` entries on this node.
   */
  async watch(conn: DeviceConnection, users: readonly string[]): Promise<WatchRefusal | undefined> {
    const list = new Set(users);
    const owner = conn.principal.userId;
    // No list yet: the socket has no `watching` set (made at its first list).
    const held = conn.watching?.size ?? 0;
    if (this.entries - held + list.size > this.nodeLimit) return "node";
    if ((this.ownerEntries.get(owner) ?? 0) - held + list.size > this.accountLimit) return "account";
    this.unwatch(conn);
    const generation = ++conn.watchGeneration;
    if (list.size === 0) return undefined;
    // The list itself is the socket's `watching` (this method's own Set, not the caller's array).
    const seeing = new Set<string>();
    conn.watching = list;
    conn.seeing = seeing;
    for (const user of list) {
      let set = this.watchers.get(user);
      if (!set) {
        set = new Set();
        this.watchers.set(user, set);
      }
      set.add(conn);
    }
    this.entries += list.size;
    this.ownerEntries.set(owner, (this.ownerEntries.get(owner) ?? 0) + list.size);
    let mine = this.byOwner.get(owner);
    if (!mine) {
      mine = new Set();
      this.byOwner.set(owner, mine);
    }
    mine.add(conn);
    const [visible, states] = await Promise.all([
      this.audience.visibleTo(owner, [...list]),
      this.presence.states([...list]),
    ]);
    // Meanwhile the socket may have closed or replaced its list (a new generation, new sets).
    const current = conn.watchGeneration === generation;
    if (current) for (const user of visible) if (list.has(user)) seeing.add(user);
    for (const state of states) {
      // Remember and report only what is still watched.
      if (!this.watchers.has(state.user)) continue;
      this.lastPresence.set(state.user, presenceSignature(state));
      if (!current || !list.has(state.user)) continue;
      conn.send(seeing.has(state.user) ? { type: "presence", ...state } : unseen(state.user));
    }
    return undefined;
  }

  /** Drops the socket's watch list (a new list, or the socket closed), and every user nobody watches any more. */
  unwatch(conn: DeviceConnection): void {
    let removed = 0;
    for (const user of conn.watching ?? []) {
      const set = this.watchers.get(user);
      if (!set?.delete(conn)) continue;
      this.entries--;
      removed++;
      if (set.size === 0) {
        this.watchers.delete(user);
        this.lastPresence.delete(user);
      }
    }
    conn.watching = undefined;
    conn.seeing = undefined;
    conn.watchGeneration++;
    const owner = conn.principal.userId;
    const left = (this.ownerEntries.get(owner) ?? 0) - removed;
    if (left > 0) this.ownerEntries.set(owner, left);
    else this.ownerEntries.delete(owner);
    const mine = this.byOwner.get(conn.principal.userId);
    if (mine?.delete(conn) && mine.size === 0) this.byOwner.delete(conn.principal.userId);
  }

  /** A user's presence changed (from any node): tell the watchers here who may see it, if it is news. */
  changed(state: PresenceState): void {
    const watchers = this.watchers.get(state.user);
    if (!watchers) return;
    const signature = presenceSignature(state);
    if (this.lastPresence.get(state.user) === signature) return;
    this.lastPresence.set(state.user, signature);
    for (const conn of watchers) if (conn.seeing?.has(state.user)) conn.send({ type: "presence", ...state });
  }

  /**
   * Re-reads every watched user's state (a crashed node's leases expire without an announcement),
   * then re-evaluates who may see whom for every list here (relations changed on other nodes).
   */
  async refresh(): Promise<void> {
    for (const state of await this.presence.states([...this.watchers.keys()])) this.changed(state);
    if (this.rechecking) return;
    this.rechecking = true;
    try {
      const all = new Set<DeviceConnection>();
      for (const conns of this.byOwner.values()) for (const conn of conns) all.add(conn);
      // One query per list, one after another: a slow pass delays the next, it never piles up.
      for (const conn of all) await this.recheckOne(conn);
    } finally {
      this.rechecking = false;
    }
  }

  /**
   * Relations of these users changed on this node (a block, leaving or being removed from a group,
   * accepting an invitation): re-evaluates at once the lists that name them and the lists of their
   * own sockets here.
   */
  async recheck(users: readonly string[]): Promise<void> {
    const touched = new Set<DeviceConnection>();
    for (const user of users) {
      for (const conn of this.watchers.get(user) ?? []) touched.add(conn);
      for (const conn of this.byOwner.get(user) ?? []) touched.add(conn);
    }
    for (const conn of touched) await this.recheckOne(conn);
  }

  /** Applies the current audience to one socket's list: lost users are reported unseen, gained ones with their state. */
  private async recheckOne(conn: DeviceConnection): Promise<void> {
    const { watching, seeing } = conn;
    if (!watching || !seeing || watching.size === 0 || conn.isClosed()) return;
    const generation = conn.watchGeneration;
    const visible = await this.audience.visibleTo(conn.principal.userId, [...watching]);
    // Same generation: the same list and sets (a new list or an unwatch makes a new generation).
    if (conn.watchGeneration !== generation) return;
    const gained: string[] = [];
    for (const user of seeing) {
      if (visible.has(user)) continue;
      seeing.delete(user);
      conn.send(unseen(user));
    }
    for (const user of visible) {
      if (seeing.has(user) || !watching.has(user)) continue;
      seeing.add(user);
      gained.push(user);
    }
    if (gained.length === 0) return;
    const states = await this.presence.states(gained);
    for (const state of states) {
      if (conn.watchGeneration === generation && seeing.has(state.user))
        conn.send({ type: "presence", ...state });
    }
  }

  /** Current sizes, for tests and metrics. */
  stats(): WatchStats {
    return { users: this.watchers.size, entries: this.entries, remembered: this.lastPresence.size };
  }
}
