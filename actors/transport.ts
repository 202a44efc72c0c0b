/** Where the answer to an `ask` goes: the asking node and its pending request id. */
export interface ReplyTo {
  node: string;
  id: string;
}

/** An envelope for one or many actors on the receiving node (many: Manifold-style fan-out). */
export interface EnvelopeFrame {
  t: "env";
  keys: string[];
  msg: unknown;
  /** Forwarding hops so far; a message bouncing between nodes with stale rings slows down. */
  hops: number;
  reply?: ReplyTo;
  /** Set when this is a stop command (erasure) rather than a message. */
  stop?: string;
}

/** The answer to an `ask`. */
export interface ReplyFrame {
  t: "reply";
  id: string;
  ok: boolean;
  value?: unknown;
  code?: string;
  error?: string;
}

/** "I have passivated every actor that moved away from me in ring `ring`; these keys now go to you." */
export interface HandoffFrame {
  t: "handoff";
  from: string;
  ring: string;
  keys: string[];
}

/** Admin command: the receiving node drains itself. */
export interface DrainFrame {
  t: "drain";
  /** The node to drain; an adopter of a dead node's inbox ignores drains meant for the dead node. */
  node: string;
}

/** Everything nodes send each other. */
export type Frame = EnvelopeFrame | ReplyFrame | HandoffFrame | DrainFrame;

/** Processes one transfer; the transport acknowledges it only when this resolves. */
export type FrameHandler = (frames: Frame[]) => Promise<void>;

/**
 * Node-to-node transport port: one durable inbox per node.
 * Contract: `send` resolves only once the destination's inbox holds the transfer durably; an
 * inbox that does not exist rejects with UnroutableError; a transfer not yet acknowledged when its
 * consumer dies goes back to the inbox; a dead node's inbox can be adopted by a survivor.
 */
export interface Transport {
  readonly nodeId: string;
  /** False while the transport cannot reach its broker (it reconnects by itself); absent: always reachable. */
  readonly connected?: boolean;
  /** Creates this node's inbox and starts consuming it. `onFatal`: the transport can no longer receive. */
  start(handler: FrameHandler, onFatal: (error: unknown) => void): Promise<void>;
  /** One transfer of many frames to one node. */
  send(nodeId: string, frames: Frame[]): Promise<void>;
  /**
   * Consumes a dead node's inbox through `handler` until it stays empty, then deletes it.
   * Resolves true when deleted (or absent), false when `shouldStop` said the node came back or
   * the inbox still has a consumer (its node alive after all, only taken for dead, or another
   * adopter): an inbox is never consumed beside its node, whose transfers (replies to its asks,
   * handoff notices, its sockets' commands) nobody else can handle. The caller tries again later.
   */
  adopt(nodeId: string, handler: FrameHandler, shouldStop: () => boolean): Promise<boolean>;
  /** Graceful stop: no new deliveries, waits for in-flight ones; true when the inbox was empty and deleted. */
  stop(): Promise<boolean>;
  /** Abrupt stop (crash simulation): unacknowledged transfers return to the inbox. */
  abort(): Promise<void>;
}
