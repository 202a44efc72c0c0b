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
/** How long a change's publication is waited for before the caller goes on without it (ms). */
const PUBLISH_WAIT_MS = 1000;

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
 * Messages (space-separated, from nodes only; anything else is ignored): `h <node>` heartbeat,
 * `d <node> <user>` devices changed, `b <node> <blocker> <blocked>` block changed.
 */
export class ListChangeChannel {
  private subscriber: Redis | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  /** When this node last heard its own heartbeat (ms, `now()`); -Infinity after a close. */
  private lastHeard = Number.NEGATIVE_INFINITY;

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
    this.heartbeat = setInterval(() => void this.publish(`h ${this.nodeId}`), HEARTBEAT_MS);
    try {
      await subscriber.subscribe(this.channel);
    } catch (error) {
      this.logger.warn({ err: error }, "could not subscribe to device and block changes");
    }
    void this.publish(`h ${this.nodeId}`);
  }

  private heard(text: string): void {
    const [kind, node, first, second] = text.split(" ");
    if (!this.live) {
      // Anything published while the subscription was away is lost: nothing cached is trusted.
      this.lists.forgetLists();
    }
    if (kind === "h" && node === this.nodeId) this.lastHeard = this.now();
    // Our own changes were applied here before they were published.
    if (node === this.nodeId || first === undefined) return;
    if (kind === "d") this.lists.devicesChanged(first);
    else if (kind === "b" && second !== undefined) this.lists.blocksChanged(first, second);
  }

  /**
   * Tells every node that `userId`'s devices changed. Resolves once Redis took it (every live
   * subscriber has it then), or after PUBLISH_WAIT_MS; a failure is logged, never thrown: the
   * change is committed already, and other nodes re-read their lists within `keptFor` at most.
   */
  publishDevices(userId: string): Promise<void> {
    return this.publish(`d ${this.nodeId} ${userId}`);
  }

  /** Tells every node that `blocker`'s blocks changed (as `publishDevices`). */
  publishBlocks(blocker: string, blocked: string): Promise<void> {
    return this.publish(`b ${this.nodeId} ${blocker} ${blocked}`);
  }

  private async publish(message: string): Promise<void> {
    const sent = this.redis.publish(this.channel, message).then(
      () => undefined,
      (error: unknown) => {
        // The kind only: the message names users.
        this.logger.warn({ err: error, kind: message[0] }, "could not publish a device or block change");
      },
    );
    await settledWithin(sent, PUBLISH_WAIT_MS);
  }

  /** Stops the heartbeat and closes the subscription. */
  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    this.lastHeard = Number.NEGATIVE_INFINITY;
    await this.subscriber?.quit().catch(() => {});
    this.subscriber = undefined;
  }
}
