/** `up` members own ring positions; `draining` members are alive but hand their actors off. */
export type MemberStatus = "up" | "draining";

/** One live node as the cluster sees it (refreshed by its heartbeat). */
export interface MemberInfo {
  nodeId: string;
  /** Where operators (and the gateway) reach the node, e.g. `10.0.0.5:8080`. */
  address: string;
  status: MemberStatus;
  /** Active actors at the last heartbeat. */
  actors: number;
  /** Open client connections at the last heartbeat. */
  connections: number;
  startedAt: number;
}

/** Counters a node reports with each heartbeat. */
export interface MemberStats {
  actors: number;
  connections: number;
}

/** Listener for membership changes: joins, leaves, expiries, status changes, dead nodes appearing. */
export type MembershipListener = (members: readonly MemberInfo[]) => void;

/**
 * Cluster membership port. A node joins by heartbeating; a node that stops heartbeating drops
 * out after its TTL and becomes a dead node whose queue a survivor adopts, then forgets.
 */
export interface Membership {
  readonly self: string;
  /** Registers this node and starts heartbeating; resolves once the first view is loaded. */
  join(info: { address: string; status?: MemberStatus }, stats: () => MemberStats): Promise<void>;
  /** Changes this node's status and announces it at once. */
  setStatus(status: MemberStatus): Promise<void>;
  /** Current live members, this node included once joined. */
  members(): readonly MemberInfo[];
  /** Nodes that registered but are no longer alive and not yet forgotten. */
  deadNodes(): readonly string[];
  /**
   * The dead nodes (of `deadNodes`) that announced a graceful `leave`: they handed their actors off
   * and stopped, but stay registered because their inbox was not empty (messages sent to them after
   * they stopped consuming) until a survivor adopts it. Not crashed: operators are told "left".
   * A node whose announcement was missed (this node's subscription was down) counts as dead.
   */
  leftNodes(): readonly string[];
  /** Drops a dead node from the registry once its leftovers (its queue) are dealt with. */
  forget(nodeId: string): Promise<void>;
  /** Re-reads the membership now instead of waiting for the next heartbeat. */
  refresh(): Promise<void>;
  /** Subscribes to changes; returns the unsubscribe function. */
  onChange(listener: MembershipListener): () => void;
  /** Graceful exit: stops heartbeating and announces the leave. */
  leave(options?: { forget?: boolean }): Promise<void>;
  /** Abrupt exit (crash simulation): stops heartbeating without announcing anything. */
  abort(): Promise<void>;
}

/** Fingerprint of what listeners care about: ids, statuses and dead nodes, not counters. */
export function viewSignature(members: readonly MemberInfo[], dead: readonly string[]): string {
  const live = members.map((m) => `${m.nodeId}=${m.status}`).sort();
  return `${live.join(",")}|${[...dead].sort().join(",")}`;
}
