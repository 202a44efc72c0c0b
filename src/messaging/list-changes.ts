import type Redis from "ioredis";
import { settledWithin } from "../../actors/index.ts";
import type { Logger } from "../observability/logger.ts";

/** What the channel tells this node's cached lists (src/messaging/service.ts). */
export interface CachedLists {
  /** A device of `userId` was added or removed on some node. */
  devicesChanged(userId: string): void;
  /** `blocker` blocked or unblocked `blocked` on some node. */
  blocksChanged(blocker: string, blocked: string): void;
  /** Changes may have been missed: drop every cached list. */
  forgetLists(): void;
}

/** How often each node publishes a heartbeat on the channel (ms). */
const HEARTBEAT_MS = 1000;
/**
 * The subscription counts as live while this node has heard its own heartbeat within this long
 * (ms): a connection that stopped delivering without closing is noticed within it.
 */
const LIVENESS_MS = 3 * HEARTBEAT_MS;
/** How long a change's publication and its acknowledgements are waited for before the caller goes on without them (ms). */
const PUBLISH_WAIT_MS = 1000;
/** A heartbeat's third word: the node acknowledges the changes it applied (`a` messages). */
const ACKS = "a";

/**
 * Device and block changes between nodes, over Redis pub/sub on `<prefix>lists`. A node that
 * changes a user's devices or blocks publishes it (`publishDevices` / `publishBlocks`, after its
 * commit); every node's cached copy of that list is dropped when the message arrives. While the
 * subscription is live (`live`: this node heard its own heartbeat, published every HEARTBEAT_MS,
 * within LIVENESS_MS, and the connection has not closed since) a node may keep its lists until a
 * change; otherwise it must fall back to re-reading them on a timer. Pub/sub delivers at most once:
 * when the subscription becomes live again after any gap (a reconnect, or heartbeats that stopped),
 * `forgetLists` runs before the first message is acted on, since changes published meanwhile are lost.
 *
 * Redis taking a message is not another node having read it: that node may handle a WebSocket frame
 * that arrived after the change's HTTP reply before it reads its subscription. So each node applies
 * a change and then acknowledges it on the channel, and the publisher waits (at most
 * PUBLISH_WAIT_MS) for an acknowledgement from every peer whose heartbeat it heard within
 * LIVENESS_MS: a send on any live node after the change's reply sees the change. A peer that
 * started within the last heartbeat, or one that stopped answering, is not waited for (or not
 * beyond PUBLISH_WAIT_MS). A node promises acknowledgements (the `a` of its heartbeat) only while
 * its own subscription is live: one that cannot hear the channel (its subscriber connection down
 * or refused while its publishing connection works) acknowledges nothing, and its peers, which
 * heard its heartbeats all the same, made every change wait PUBLISH_WAIT_MS for as long as that
 * lasted. A heartbeat without the `a`, and the one `close` sends, drop the node from its peers'
 * waits at once (a node stopping was waited for until its last heartbeat aged out); a node whose
 * subscription is live again publishes a heartbeat with it at once, not a heartbeat later.
 *
 * Messages (space-separated, from nodes only; anything else is ignored): `h <node> a` heartbeat (the
 * `a`: the node acknowledges changes; a heartbeat without it, from a node not hearing the channel,
 * stopping, or of an older version, is not waited for), `d <node> <user> <nonce>` devices changed,
 * `b <node> <blocker> <blocked> <nonce>` block changed, `a <node> <publisher> <nonce>` the change
 * `<nonce>` of `<publisher>` applied on `<node>`. An older node's changes carry no nonce and are not
 * acknowledged.
 */
export class ListChangeChannel {
  private subscriber: Redis | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  /** When this node last heard its own heartbeat (ms, `now()`); -Infinity after a close. */
  private lastHeard = Number.NEGATIVE_INFINITY;
  /** Peers that acknowledge changes, by node id: when their heartbeat was last heard (ms, `now()`). */
  private readonly peers = new Map<string, number>();
  /** This node's changes waiting for acknowledgements, by nonce: the peers not yet heard from. */
  private readonly unacknowledged = new Map<string, { waiting: Set<string>; done: () => void }>();
  private nonces = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly nodeId: string,
    private readonly lists: CachedLists,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  private get channel(): string {
    return `${this.prefix}lists`;
  }

  /** Whether every node's published changes reach this node now (see the class comment). */
  get live(): boolean {
    return this.now() - this.lastHeard < LIVENESS_MS;
  }

  /** The peers whose changes' acknowledgements a publication here waits for now (node ids). */
  get acknowledgingPeers(): string[] {
    return [...this.livePeers()];
  }

  /**
   * Subscribes (a connection of its own, `redis.duplicate()`; ioredis re-subscribes after a
   * reconnect) and starts the heartbeat. Resolves once subscribed; a failure is logged and retried
   * by ioredis, and the node runs on its timers meanwhile.
   */
  async start(): Promise<void> {
    const subscriber = this.redis.duplicate();
    this.subscriber = subscriber;
    // Errors are logged by the node's own connection (src/node.ts).
    subscriber.on("error", () => {});
    subscriber.on("close", () => {
      this.lastHeard = Number.NEGATIVE_INFINITY;
    });
    subscriber.on("message", (_channel: string, text: string) => this.heard(text));
    this.heartbeat = setInterval(() => void this.publish(this.heartbeatMessage()), HEARTBEAT_MS);
    try {
      await subscriber.subscribe(this.channel);
    } catch (error) {
      this.logger.warn({ err: error }, "could not subscribe to device and block changes");
    }
    void this.publish(this.heartbeatMessage());
  }

  /** `h <node> a` while this node hears the channel (it acknowledges changes), else `h <node>`. */
  private heartbeatMessage(): string {
    return this.live ? `h ${this.nodeId} ${ACKS}` : `h ${this.nodeId}`;
  }

  private heard(text: string): void {
    // Closing (`close`): nothing heard now makes this node live again or acknowledge anything.
    if (this.heartbeat === undefined) return;
    const [kind, node, first, second, third] = text.split(" ");
    if (!this.live) {
      // Anything published while the subscription was away is lost: nothing cached is trusted.
      this.lists.forgetLists();
    }
    if (node === undefined) return;
    if (kind === "h") {
      if (node === this.nodeId) {
        const was = this.live;
        this.lastHeard = this.now();
        // Live again: say so at once, not at the next heartbeat, so peers wait for this node's
        // acknowledgements from now on (its lists are cached again from now on).
        if (!was) void this.publish(this.heartbeatMessage());
      } else if (first === ACKS) this.peers.set(node, this.now());
      else {
        // Not hearing the channel, or stopping: it would acknowledge nothing, so nothing waits for it.
        this.peers.delete(node);
        for (const nonce of [...this.unacknowledged.keys()]) this.acknowledged(nonce, node);
      }
      return;
    }
    if (kind === "a") {
      if (first === this.nodeId && second !== undefined) this.acknowledged(second, node);
      return;
    }
    // Our own changes were applied here before they were published.
    if (node === this.nodeId || first === undefined) return;
    let nonce: string | undefined;
    if (kind === "d") {
      this.lists.devicesChanged(first);
      nonce = second;
    } else if (kind === "b" && second !== undefined) {
      this.lists.blocksChanged(first, second);
      nonce = third;
    } else return;
    if (nonce !== undefined) void this.publish(`a ${this.nodeId} ${node} ${nonce}`);
  }

  private acknowledged(nonce: string, by: string): void {
    const change = this.unacknowledged.get(nonce);
    if (!change) return;
    change.waiting.delete(by);
    if (change.waiting.size === 0) change.done();
  }

  /** The peers that acknowledge changes and were heard within LIVENESS_MS (the stale are forgotten). */
  private livePeers(): Set<string> {
    const now = this.now();
    const live = new Set<string>();
    for (const [node, at] of this.peers) {
      if (now - at < LIVENESS_MS) live.add(node);
      else this.peers.delete(node);
    }
    return live;
  }

  /**
   * Tells every node that `userId`'s devices changed. Resolves once Redis took it and every live
   * peer acknowledged it (see the class comment), or after PUBLISH_WAIT_MS; a failure is logged,
   * never thrown: the change is committed already, and other nodes re-read their lists within
   * `keptFor` at most.
   */
  publishDevices(userId: string): Promise<void> {
    return this.publishChange(`d ${this.nodeId} ${userId}`);
  }

  /** Tells every node that `blocker`'s blocks changed (as `publishDevices`). */
  publishBlocks(blocker: string, blocked: string): Promise<void> {
    return this.publishChange(`b ${this.nodeId} ${blocker} ${blocked}`);
  }

  /** Publishes `message` with a nonce appended and waits for the live peers' acknowledgements. */
  private async publishChange(message: string): Promise<void> {
    const nonce = String(++this.nonces);
    // Acknowledgements arrive on the subscription: without it none would be heard.
    const waiting = this.live ? this.livePeers() : new Set<string>();
    let done = () => {};
    const acknowledged = new Promise<void>((resolve) => {
      done = resolve;
    });
    if (waiting.size === 0) done();
    else this.unacknowledged.set(nonce, { waiting, done });
    try {
      await settledWithin(Promise.all([this.send(`${message} ${nonce}`), acknowledged]), PUBLISH_WAIT_MS);
    } finally {
      this.unacknowledged.delete(nonce);
    }
  }

  private async publish(message: string): Promise<void> {
    await settledWithin(this.send(message), PUBLISH_WAIT_MS);
  }

  /** Publishes `message`; resolves once Redis took it, or failed (logged, never thrown). */
  private send(message: string): Promise<void> {
    return this.redis.publish(this.channel, message).then(
      () => undefined,
      (error: unknown) => {
        // The kind only: the message names users.
        this.logger.warn({ err: error, kind: message[0] }, "could not publish a device or block change");
      },
    );
  }

  /**
   * Stops the heartbeat, tells the peers this node acknowledges nothing from now on (a heartbeat
   * without `a`, waited for at most PUBLISH_WAIT_MS; lost, they stop waiting for it after
   * LIVENESS_MS) and closes the subscription.
   */
  async close(): Promise<void> {
    const started = this.heartbeat !== undefined;
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    this.lastHeard = Number.NEGATIVE_INFINITY;
    if (started) await this.publish(this.heartbeatMessage());
    await this.subscriber?.quit().catch(() => {});
    this.subscriber = undefined;
  }
}
