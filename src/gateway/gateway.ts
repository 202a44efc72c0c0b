import type { WebSocketHandler } from "bun";
import { Elysia } from "elysia";
import type { NodesGone } from "../../actors/index.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import type { OfflineQueue } from "../messaging/offline-queue.ts";
import type { DeviceSocketRef, Presence } from "../messaging/presence.ts";
import type { MessagingService } from "../messaging/service.ts";
import type { Logger } from "../observability/logger.ts";
import type { MessageTallies } from "../observability/metrics.ts";
import { CloseCode } from "../protocol/index.ts";
import {
  type ClientAddresses,
  type RateLimiter,
  type RateLimitRule,
  rateLimitedError,
  spendOrRefuse,
  UNKNOWN_ADDRESS,
} from "../ratelimit/index.ts";
import { bearerToken } from "../sessions/auth.ts";
import type { ConnectAdmission, SessionService } from "../sessions/service.ts";
import { DeviceConnection, type DeviceSocket, type SocketData } from "./connection.ts";
import { FrameHandler } from "./frame-handler.ts";
import type { NodeLink } from "./node-link.ts";
import { type Audience, PresenceWatchers, type WatchStats } from "./presence-watch.ts";
import type { SocketRegistry } from "./socket-registry.ts";
import { type RevalidationReport, SocketRevalidation } from "./socket-revalidation.ts";
import { TokenBucket } from "./token-bucket.ts";

export interface GatewayOptions {
  nodeId: string;
  sessions: SessionService;
  messaging: MessagingService;
  offline: OfflineQueue;
  presence: Presence;
  logger: Logger;
  /** This node's sockets. */
  registry: SocketRegistry;
  /** Reaches other nodes' gateways (to replace a device's socket held elsewhere). */
  link: NodeLink;
  /** Frames a device may send per second, and how many it may save up. */
  rateLimit?: { perSecond: number; burst: number };
  /** How long a socket's presence lease lasts without renewal (ms). */
  presenceLeaseMs?: number;
  /** Watch entries (socket, watched user) this node holds at most (PRESENCE_WATCHES_PER_NODE). */
  watchLimit?: number;
  /** Watch entries one account's sockets hold on this node at most (PRESENCE_WATCHES_PER_ACCOUNT). */
  accountWatchLimit?: number;
  /** Who may see whose presence (`PresenceAudience`, docs/PROTOCOL.md "Presence"). */
  audience: Audience;
  /**
   * How often every socket is pinged (ms, WS_PING_INTERVAL_MS, default 15 s); a socket that has not
   * answered the previous ping when the next is due is closed.
   */
  pingIntervalMs?: number;
  /**
   * How often every socket's token generation is compared with its device's in the database (ms,
   * WS_REVALIDATE_INTERVAL_SECONDS, default 30 s): a revoked socket whose close was lost is closed
   * within this (`SocketRevalidation`).
   */
  revalidateIntervalMs?: number;
  /** The node's messaging counts (src/observability/metrics.ts), read by /metrics. */
  tallies: MessageTallies;
  /** Users whose erasure has started: no socket of theirs opens, and nothing is written for them. */
  fence?: ErasureFence;
  /**
   * Counts upgrades against the connect budgets (`connectBudgets`), the node's rate limiter (Redis:
   * shared by every node). Unset: upgrades are not budgeted (unit tests of the gateway alone).
   */
  connectLimiter?: RateLimiter;
  /** Upgrades one device may make per minute (WS_CONNECTS_PER_DEVICE, default 60); its account ten times that. */
  connectsPerDevice?: number;
  /** Who an upgrade comes from (TRUSTED_PROXIES), for the budget of refused tokens; unset: one key for all. */
  addresses?: ClientAddresses;
}

/** Default of WS_CONNECTS_PER_DEVICE: upgrades one device may make per minute. */
export const DEFAULT_CONNECTS_PER_DEVICE = 60;

/**
 * The upgrade budgets of `GET /v1/ws`, per minute: `perDevice` upgrades of one device, and ten
 * devices' worth for all the devices of one account (an account may have 127, each a login away),
 * spent only by upgrades whose token is current; and `perDevice` upgrades per client address whose
 * token was well signed but revoked (or its device removed), each of which cost a database read:
 * an old token would otherwise spend its device's budget and lock the device out.
 * A connect costs the node far more than a frame (the token's device read, the presence lease, the
 * user actor told, the offline queue opened and read, and the same bookkeeping again at the close:
 * about 2.3 CPU-ms on the embedded default), and frames are budgeted while connects were not: one
 * account's eight devices opening and closing sockets in a loop took more than a core (docs/PROTOCOL.md,
 * "Connect budget"). A reconnecting client backs off from 0.5 s (the SDK's Messenger), so 60 a
 * minute is never reached by one device that is only flapping.
 */
export function connectBudgets(perDevice: number): {
  device: RateLimitRule;
  account: RateLimitRule;
  refusedPerAddress: RateLimitRule;
} {
  return {
    device: { name: "ws-connects-device", limit: perDevice, windowMs: 60_000 },
    account: { name: "ws-connects-account", limit: perDevice * 10, windowMs: 60_000 },
    refusedPerAddress: { name: "ws-connects-refused-address", limit: perDevice, windowMs: 60_000 },
  };
}

/** How long a new socket's drain waits for the same device's previous socket here to finish closing. */
const PREVIOUS_DRAIN_WAIT_MS = 5_000;

/** Envelopes taken from the offline queue per read while a device drains it. */
const DRAIN_CHUNK = 256;

/**
 * The WebSocket gateway of `GET /v1/ws`: authenticates the upgrade, keeps one socket per device,
 * brings a device online (presence lease, replacing its socket elsewhere, offline queue drained
 * before live delivery) and does the bookkeeping when it closes. Frames are handled by
 * `FrameHandler`; pushes from the actors land in the `SocketRegistry`.
 *
 * The socket events come from Bun's own `websocket` handler (`websocket` below), which the node
 * passes to `listen`: Elysia's WebSocket wrapper would parse every frame as JSON before we could
 * check its size.
 */
export class Gateway {
  private readonly byWs = new WeakMap<DeviceSocket, DeviceConnection>();
  private readonly frames: FrameHandler;
  private readonly watchers: PresenceWatchers;
  /** Disconnect bookkeeping still running (presence, offline flush), awaited by stop(). */
  private readonly closing = new Set<Promise<void>>();
  /** The latest closing socket's bookkeeping per device (`user.device`), until it is done. */
  private readonly closingDevices = new Map<string, Promise<void>>();
  private readonly unsubscribe: () => void;
  private readonly renewTimer: ReturnType<typeof setInterval>;
  private readonly pingTimer: ReturnType<typeof setInterval>;
  private readonly revalidation: SocketRevalidation;
  private readonly revalidateTimer: ReturnType<typeof setInterval>;
  /** The revalidation pass under way, if any: passes never overlap. */
  private revalidating: Promise<RevalidationReport> | undefined;
  /** A pass was asked for while one ran: it runs once that one is done. */
  private revalidateAgain = false;
  /** Sockets closed because they missed a pong, since start. */
  deadPeers = 0;
  /** Makes a socket's token bucket (DEVICE_RATE_LIMIT), one function shared by every socket. */
  private readonly newBucket: () => TokenBucket;
  /** The connect budgets of an upgrade from one client address (`connectBudgets`); undefined: none. */
  private readonly admitConnect: ((address: string) => ConnectAdmission) | undefined;

  constructor(private readonly options: GatewayOptions) {
    const rate = options.rateLimit ?? { perSecond: 100, burst: 200 };
    this.newBucket = () => new TokenBucket(rate.perSecond, rate.burst);
    const limiter = options.connectLimiter;
    if (limiter) {
      const budgets = connectBudgets(options.connectsPerDevice ?? DEFAULT_CONNECTS_PER_DEVICE);
      const deviceMessage = "this device connects too often, retry later";
      const accountMessage = "your devices connect too often, retry later";
      const refusedMessage = "too many refused connects from your address, retry later";
      const refuseIfSpent = async (rule: RateLimitRule, key: string, message: string) => {
        const decision = await limiter.peek(rule, key);
        if (!decision.allowed) throw rateLimitedError(decision.retryAfterMs, message);
      };
      this.admitConnect = (address) => ({
        // Before the device is read: a device, account or address already past its budget costs
        // no read, and nothing is spent yet (the token may be an old one).
        check: async ({ userId, deviceId }) => {
          await refuseIfSpent(budgets.refusedPerAddress, address, refusedMessage);
          await refuseIfSpent(budgets.device, `${userId}.${deviceId}`, deviceMessage);
          await refuseIfSpent(budgets.account, userId, accountMessage);
        },
        refused: async () => {
          await limiter.hit(budgets.refusedPerAddress, address);
        },
        // The token is current. The device's first: a device refused spends nothing of its account's.
        spend: async ({ userId, deviceId }) => {
          await spendOrRefuse(limiter, budgets.device, `${userId}.${deviceId}`, deviceMessage);
          await spendOrRefuse(limiter, budgets.account, userId, accountMessage);
        },
      });
    }
    this.watchers = new PresenceWatchers(
      options.presence,
      options.watchLimit,
      options.audience,
      options.accountWatchLimit,
    );
    this.frames = new FrameHandler({
      messaging: options.messaging,
      sessions: options.sessions,
      watchers: this.watchers,
      logger: options.logger,
      tallies: options.tallies,
    });
    this.unsubscribe = options.presence.subscribe((state) => this.watchers.changed(state));
    const leaseMs = options.presenceLeaseMs ?? 60_000;
    this.renewTimer = setInterval(() => void this.renew(), Math.max(100, Math.floor(leaseMs / 3)));
    this.renewTimer.unref?.();
    this.pingTimer = setInterval(() => this.pingAll(), options.pingIntervalMs ?? 15_000);
    this.pingTimer.unref?.();
    this.revalidation = new SocketRevalidation({
      registry: options.registry,
      generations: (userIds) => options.sessions.deviceGenerations(userIds),
      fenced: (userId) => this.fenced(userId),
      logger: options.logger,
    });
    this.revalidateTimer = setInterval(() => {
      if (!this.revalidating) void this.revalidate();
    }, options.revalidateIntervalMs ?? 30_000);
    this.revalidateTimer.unref?.();
  }

  /**
   * Compares every socket of this node with its device's token generation now and closes the stale
   * ones (`SocketRevalidation`); run on the WS_REVALIDATE_INTERVAL_SECONDS schedule and when the node
   * regains contact (Redis back). Asked while a pass runs, one more pass follows it (a pass started
   * before contact came back may have missed). Resolves with what the pass found; never rejects.
   */
  revalidate(): Promise<RevalidationReport> {
    if (this.revalidating) {
      this.revalidateAgain = true;
      return this.revalidating;
    }
    const pass = async (): Promise<RevalidationReport> => {
      let report: RevalidationReport = { checked: 0, closed: 0 };
      do {
        this.revalidateAgain = false;
        report = await this.revalidation.run().catch((error: unknown) => {
          this.options.logger.warn({ err: error }, "socket revalidation failed");
          return { checked: 0, closed: 0 };
        });
      } while (this.revalidateAgain);
      return report;
    };
    const running = pass().finally(() => {
      this.revalidating = undefined;
    });
    this.revalidating = running;
    return running;
  }

  /** Open sockets on this node. */
  get connections(): number {
    return this.options.registry.size;
  }

  /**
   * Relations of these users changed on this node (block, group membership): who sees whose
   * presence is re-evaluated at once for the watch lists here that involve them.
   */
  relationsChanged(users: readonly string[]): void {
    void this.watchers
      .recheck(users)
      .catch((error) => this.options.logger.warn({ err: error }, "presence recheck failed"));
  }

  /** How much the presence watch lists of this node's sockets hold. */
  watchStats(): WatchStats {
    return this.watchers.stats();
  }

  /**
   * Bun's WebSocket handler and limits for the public listener (`Bun.serve({ websocket })`). The
   * payload limit is above the protocol's 256 KiB so the gateway can answer an oversized frame
   * with `too_large`; beyond it Bun closes the socket (1009).
   */
  readonly websocket: WebSocketHandler<SocketData> = {
    maxPayloadLength: 1024 * 1024,
    // A reader this far behind is disconnected; what it has not acked goes to its offline queue.
    backpressureLimit: 4 * 1024 * 1024,
    closeOnBackpressureLimit: true,
    // Bun's own keep-alive pings only a socket that has been idle (no frame either way) for most of
    // idleTimeout: a peer that stopped reading while the server keeps writing to it (half-open TCP,
    // the kernel buffers the data) is never idle, so it is never pinged. `pingAll` pings every socket
    // on a schedule instead; Bun's idle timeout stays as a backstop.
    idleTimeout: 120,
    sendPings: true,
    open: (ws) => this.open(ws),
    pong: (ws) => {
      const conn = this.byWs.get(ws);
      if (conn) conn.awaitingPong = false;
    },
    message: (ws, message) => {
      const conn = this.byWs.get(ws);
      // A socket the server is closing (revoked, expired, replaced) takes no frame any more.
      if (conn && !conn.isClosed() && !conn.closing) this.frames.handle(conn, message);
    },
    // A drain of the offline queue waiting for room in this socket's buffer writes on.
    drain: (ws) => this.byWs.get(ws)?.wake(),
    close: (ws) => this.closed(ws),
  };

  /**
   * The Elysia plugin serving `GET /v1/ws`: authenticates before the upgrade (401 otherwise), refuses
   * a device, account or client address already past its connect budget once the token's signature
   * is checked and before the device is read, spends the device's and its account's once the token
   * is known current, and the address's refusals when it is revoked (429 `rate_limited` with
   * Retry-After past any, `connectBudgets`), then hands the socket to Bun, whose events reach
   * `websocket`.
   */
  routes() {
    const { sessions } = this.options;
    return new Elysia({ name: "clearbox.gateway" }).get(
      "/v1/ws",
      async ({ request, server, headers, query }) => {
        const token = bearerToken(
          headers.authorization,
          typeof query.token === "string" ? query.token : undefined,
        );
        if (!token) throw new DomainError("unauthorized", "missing bearer token");
        const address = this.options.addresses?.of(request, server) ?? UNKNOWN_ADDRESS;
        const data: SocketData = await sessions.authenticateSession(token, this.admitConnect?.(address));
        if (this.fenced(data.principal.userId)) throw new DomainError("unauthorized", "account erased");
        if (!server?.upgrade(request, { data }))
          throw new DomainError("invalid", "expected a WebSocket upgrade request");
        return undefined;
      },
    );
  }

  private open(ws: DeviceSocket) {
    const conn = new DeviceConnection(
      ws,
      ws.data.principal,
      this.newBucket,
      // UUIDv7: ids sort in the order their sockets opened (across nodes up to clock skew), which
      // decides which of two sockets of one device on two nodes stays (`bringOnline`).
      Bun.randomUUIDv7(),
      this.options.tallies,
    );
    this.byWs.set(ws, conn);
    // The socket lives as long as its access token, unless an `auth` frame renews it.
    conn.expireAt(ws.data.expiresAt);
    this.options.registry
      .add(conn)
      ?.close(CloseCode.replaced, "replaced by a newer connection of this device");
    void conn.enqueue(async () => {
      try {
        await this.bringOnline(conn);
      } catch (error) {
        this.options.logger.error(
          { err: error, user: conn.principal.userId },
          "could not bring a device online",
        );
        conn.close(CloseCode.internalError, "internal error");
      }
    });
  }

  private ref(conn: DeviceConnection): DeviceSocketRef {
    return {
      userId: conn.principal.userId,
      deviceId: conn.principal.deviceId,
      nodeId: this.options.nodeId,
      connectionId: conn.connectionId,
    };
  }

  private fenced(userId: string): boolean {
    return this.options.fence?.has(userId) ?? false;
  }

  /**
   * The erasure fence on this node: closes the user's sockets here (4410), and drops from every
   * drain under way here the envelopes from the user it took and the device has not acked (on
   * release they would go back to the queue and be delivered again). Returns how many it dropped.
   */
  async fenceUser(userId: string): Promise<number> {
    const { registry } = this.options;
    const theirs = [...registry.values()].filter((c) => c.principal.userId === userId);
    registry.close({ userId }, CloseCode.erased, "account erased");
    // What their sockets were doing (a presence lease being written, a drain) finishes first.
    await Promise.allSettled(theirs.flatMap((c) => [c.chain, c.sendChain]));
    let dropped = 0;
    for (const conn of [...registry.values()]) {
      if (conn.drain) dropped += await conn.drain.dropFrom(userId).catch(() => 0);
    }
    return dropped;
  }

  /** Presence, replacing a socket of the same device on another node, offline queue, then live. */
  private async bringOnline(conn: DeviceConnection): Promise<void> {
    const { presence, messaging, nodeId, link, sessions } = this.options;
    const { principal } = conn;
    if (this.fenced(principal.userId)) {
      conn.close(CloseCode.erased, "account erased");
      return;
    }
    await presence.connected([this.ref(conn)]);
    // A revocation between the upgrade's check and the lease just written would not have found this
    // socket: it bumps the generation before it reads the leases, so one of the two sees the other.
    if (!(await sessions.isCurrent(principal, conn.ws.data.generation))) {
      conn.close(CloseCode.revoked, "tokens revoked");
      return;
    }
    for (const other of await presence.sockets(principal.userId)) {
      if (other.deviceId !== principal.deviceId || other.connectionId === conn.connectionId) continue;
      if (other.nodeId === nodeId) continue;
      // Its node may go away before that socket's disconnect, with messages its drain holds.
      conn.previousSockets ??= [];
      conn.previousSockets.push(other);
      // Two sockets of one device on two nodes, each closing the other it finds here, would both
      // close (4409, "do not reconnect"). The one opened later (the larger UUIDv7 id) stays, as each
      // side decides alike: this one gives way to a newer one that is still there (a lease left by
      // a dead node is not).
      if (other.connectionId > conn.connectionId) {
        const status = await link.status(other, principal.userId);
        if (status === "gone" || status === "unreachable") continue;
        conn.close(CloseCode.replaced, "replaced by a newer connection of this device");
        return;
      }
      await link
        .send(other.nodeId, {
          type: "close",
          userId: other.userId,
          deviceId: other.deviceId,
          connectionId: other.connectionId,
          code: CloseCode.replaced,
          reason: "replaced by a newer connection of this device",
        })
        .catch(() => false);
    }
    if (conn.isClosed()) return;
    await messaging.deviceConnected(principal, nodeId, conn.connectionId);
    await this.drainThenLive(conn);
  }

  /**
   * Delivers the device's offline queue, oldest first, then tells its actor to push live again.
   * The actor may answer that envelopes went back to the queue meanwhile (a replaced socket's drain
   * ended): the queue is read again, with the same drain, before the socket goes live. `again`: the
   * socket has read the queue before and its user actor asked it to read it once more (it holds the
   * device's live envelopes until this drain reports drained): with the drain the socket kept, or
   * a new one when its drain took nothing and was released after the earlier read.
   */
  private async drainThenLive(conn: DeviceConnection, again = false): Promise<void> {
    const { messaging, offline, nodeId } = this.options;
    const { principal } = conn;
    if (conn.isClosed()) return;
    conn.state = "draining";
    // Whether this read took anything from the queue: a drain that took nothing is released at
    // the end (an idle socket keeps none). A drain this socket kept from an earlier read took
    // envelopes the device may not have acked all of: it stays.
    let tookAny = false;
    if (again && conn.drain) {
      // The drain keeps what it took and the device has not acked: only what is ready is read.
      conn.rewindDrain();
      tookAny = true;
    } else if (again) {
      // The socket's earlier drain took nothing and was released after its read: a new one reads
      // the queue. No wait for a closing socket's drain: the actor asks only once one has ended
      // and given envelopes back.
      conn.drain = await offline.drain(principal.userId, principal.deviceId);
      conn.rewindDrain();
    } else {
      await conn.drain?.release();
      // A socket of this device that closed here a moment ago may still hold messages its drain
      // took and did not ack: RabbitMQ returns them to the queue only when that drain ends. Waiting
      // for it saves reading the queue twice (the actor would send this socket to read it again).
      // Bounded, so a stuck bookkeeping (a store down) does not hold this socket.
      const previous = this.closingDevices.get(conn.key);
      if (previous) await Promise.race([previous, Bun.sleep(PREVIOUS_DRAIN_WAIT_MS)]);
      if (conn.isClosed()) return;
      conn.drain = await offline.drain(principal.userId, principal.deviceId);
    }
    const drain = conn.drain;
    for (;;) {
      for (;;) {
        if (conn.isClosed()) return;
        const taken = await drain.next(DRAIN_CHUNK);
        if (taken.length === 0) break;
        tookAny = true;
        // From a user being erased: removed from the queue, not delivered.
        const erased = taken.filter((e) => this.fenced(e.senderUser));
        if (erased.length > 0) await drain.ack(erased);
        const batch = erased.length === 0 ? taken : taken.filter((e) => !this.fenced(e.senderUser));
        // At the reader's pace: all at once, a slow reader's socket passed the backpressure limit.
        if (batch.length > 0) await conn.deliverPaced(batch, "offline");
      }
      // An existing queue that held nothing (left by an older version, or emptied before): remove it.
      if (conn.takeEmptiedQueue()) {
        // Only housekeeping: a queue left behind is removed at the next drain or by the sweep.
        await messaging.queueEmptied(principal).catch((error) => {
          this.options.logger.warn(
            { err: error, user: principal.userId },
            "could not report an emptied queue",
          );
        });
      }
      if (conn.isClosed()) return;
      if (!(await messaging.deviceDrained(principal, nodeId, conn.connectionId))) break;
      conn.rewindDrain();
    }
    // A drain that took nothing holds nothing: released now, an idle socket does not keep it (a
    // later `drain again` opens a new one).
    await conn.takeUnusedDrain(tookAny)?.release();
    if (!conn.isClosed()) conn.state = "live";
  }

  /**
   * A user actor asks this node's socket of a device to read its offline queue again and report
   * drained again: envelopes went back to the queue (a replaced socket's drain ended) after the
   * socket had read it, and a live socket must not stay live while its envelopes wait in the queue
   * (docs/MESSAGING.md, "A drain that ends after another began"). Runs after what the socket is
   * doing (its chain); the actor holds the device's live envelopes meanwhile. False when that
   * connection is not open here.
   */
  drainAgain(userId: string, deviceId: number, connectionId: string): boolean {
    const conn = this.options.registry.get(userId, deviceId);
    if (!conn || conn.connectionId !== connectionId || conn.isClosed()) return false;
    void conn.enqueue(async () => {
      try {
        await this.drainThenLive(conn, true);
      } catch (error) {
        this.options.logger.error({ err: error, user: userId }, "could not drain a queue again");
        conn.close(CloseCode.internalError, "internal error");
      }
    });
    return true;
  }

  /**
   * Nodes went away without telling (`ActorSystem.onNodesGone`: their heartbeat expired, then they
   * were forgotten once a survivor deleted their inbox). A replaced socket of a device on such a
   * node never sends its disconnect, and what its drain took and the device had not acked goes back
   * to the queue only when the broker drops that node's connection, possibly after this node's
   * socket of the device read the queue and went live: the envelopes would wait there for the
   * device's next connection. So each socket here that found a socket of its device on one of those
   * nodes (`previousSockets`) tells the device's user actor that disconnect, marked `nodeGone`, and
   * the actor sends the socket to read the queue again (docs/MESSAGING.md, "A drain that ends after
   * another began"); a queue that holds nothing costs one `basic.get`. Each runs on its socket's
   * chain, after what the socket is doing. A forgotten node is forgotten here too: its sockets
   * leave `previousSockets`. A node that `left` (a graceful stop; it told its sockets' actors of
   * their disconnects as it closed them) is not read for until it is forgotten: then what its
   * connection held has gone back to the queues, and the one read covers a disconnect it failed to
   * tell (two reads per socket before, the first needless). One pass over this node's sockets per
   * call; returns how many sockets told their actor.
   */
  nodesGone(gone: NodesGone): number {
    const { messaging, logger } = this.options;
    const nodes = new Set([...gone.expired, ...gone.forgotten]);
    const forgotten = new Set(gone.forgotten);
    let told = 0;
    for (const conn of this.options.registry.values()) {
      const previous = conn.previousSockets;
      if (!previous || conn.isClosed()) continue;
      const lost = previous.filter((socket) => nodes.has(socket.nodeId));
      if (lost.length === 0) continue;
      if (forgotten.size > 0) {
        const kept = previous.filter((socket) => !forgotten.has(socket.nodeId));
        conn.previousSockets = kept.length > 0 ? kept : undefined;
      }
      told++;
      void conn.enqueue(async () => {
        try {
          for (const socket of lost) {
            if (conn.isClosed()) return;
            await messaging.deviceDisconnected(conn.principal, socket.nodeId, socket.connectionId, 0, true);
          }
        } catch (error) {
          // After an `expired` report, the `forgotten` one tries again.
          logger.warn({ err: error, user: conn.principal.userId }, "could not report a gone node's socket");
        }
      });
    }
    return told;
  }

  private closed(ws: DeviceSocket) {
    const conn = this.byWs.get(ws);
    if (!conn) return;
    conn.state = "closed";
    conn.stopExpiry();
    conn.wake();
    this.options.registry.remove(conn);
    this.watchers.unwatch(conn);
    const { presence, messaging, nodeId, logger } = this.options;
    // After whatever the connection was doing: its envelopes in flight must reach the actor first.
    // Acks sent just before the close go first: otherwise the actor would flush those envelopes
    // to the offline queue and the device would get them again on its next connection.
    const bookkeeping = Promise.all([conn.chain, conn.sendChain, ...(conn.acking ?? [])]).then(async () => {
      try {
        // What its drain held goes back to the queue now: a newer socket of the device that read
        // the queue before is sent to read it again by the actor (`requeued`).
        const requeued = (await conn.drain?.release()) ?? 0;
        // Being erased: no last-seen time is written, no actor woken (erasure sweeps both).
        if (this.fenced(conn.principal.userId)) return;
        await presence.disconnected(this.ref(conn));
        await messaging.deviceDisconnected(conn.principal, nodeId, conn.connectionId, requeued);
      } catch (error) {
        logger.error({ err: error, user: conn.principal.userId }, "disconnect bookkeeping failed");
      }
    });
    this.closing.add(bookkeeping);
    this.closingDevices.set(conn.key, bookkeeping);
    void bookkeeping.finally(() => {
      this.closing.delete(bookkeeping);
      if (this.closingDevices.get(conn.key) === bookkeeping) this.closingDevices.delete(conn.key);
    });
  }

  /**
   * Pings every socket, whatever its traffic; one that has not answered the previous ping (RFC 6455
   * §5.5.2: a peer answers a ping with a pong as soon as it reads it) is taken for dead and closed
   * at once (`terminate`: a dead peer would never complete a close handshake). Its close runs the
   * usual bookkeeping, so what it had not acked goes to its offline queue and comes again on its
   * next connection: the duplicates are what reached the peer unacked in the last two intervals.
   * So is a socket whose paced drain of the offline queue waited for room across a whole interval
   * while the reader took nothing from its buffer (`DeviceConnection.stalledSinceLastLook`), pongs
   * or not.
   */
  private pingAll(): void {
    for (const conn of this.options.registry.values()) {
      if (conn.isClosed()) continue;
      if (conn.awaitingPong) {
        this.deadPeers++;
        this.options.logger.info(
          { connectionId: conn.connectionId, deviceId: conn.principal.deviceId },
          "closing a socket that missed a pong",
        );
        conn.ws.terminate();
        continue;
      }
      // A drain waiting for room for a whole ping interval, the reader taking nothing meanwhile:
      // as dead as a missed pong, whatever pongs it sends (RFC 6455 allows them unasked).
      if (conn.stalledSinceLastLook()) {
        this.deadPeers++;
        this.options.logger.info(
          { connectionId: conn.connectionId, deviceId: conn.principal.deviceId },
          "closing a socket that took nothing of its drain for a ping interval",
        );
        conn.ws.terminate();
        continue;
      }
      conn.awaitingPong = true;
      conn.ws.ping();
    }
  }

  /**
   * Redis came back after an outage, possibly empty (no persistence): every socket lease of this
   * node is written again at once instead of at the next renewal (a third of the lease, 20 s by
   * default), and each live socket's user actor is asked whether it knows the socket. An actor
   * activated meanwhile found no lease, took the device for offline and flushed its envelopes to
   * the offline queue, which a connected device does not read: such a socket drains its queue
   * again, as on a reconnect, and the actor pushes live from then on. Sockets the actor knows are
   * left alone. Returns how many sockets drained again.
   */
  async reassertPresence(): Promise<number> {
    const { messaging, nodeId, logger } = this.options;
    await this.renew();
    const relearnt = [...this.options.registry.values()]
      .filter((conn) => conn.state === "live")
      .map((conn) => {
        const step = conn.chain.then(async () => {
          if (conn.isClosed()) return false;
          if (await messaging.deviceConnected(conn.principal, nodeId, conn.connectionId)) return false;
          await this.drainThenLive(conn);
          return true;
        });
        conn.chain = step.then(
          () => undefined,
          (error) => {
            logger.error({ err: error, user: conn.principal.userId }, "could not re-assert a socket");
            conn.close(CloseCode.internalError, "internal error");
          },
        );
        return step.catch(() => false);
      });
    const drained = (await Promise.all(relearnt)).filter(Boolean).length;
    logger.info({ sockets: relearnt.length, drained }, "re-asserted presence after a redis reconnect");
    return drained;
  }

  /** Renews presence leases of every local socket, and re-reads watched users (a crashed node's leases expire). */
  private async renew() {
    try {
      await this.options.presence.connected(
        [...this.options.registry.values()]
          .filter((c) => !this.fenced(c.principal.userId))
          .map((c) => this.ref(c)),
      );
      await this.watchers.refresh();
    } catch (error) {
      this.options.logger.warn({ err: error }, "presence renewal failed");
    }
  }

  /** Closes every socket (shutdown): clients reconnect, possibly to another node. */
  async stop(): Promise<void> {
    clearInterval(this.renewTimer);
    clearInterval(this.pingTimer);
    clearInterval(this.revalidateTimer);
    this.unsubscribe();
    const { registry } = this.options;
    for (const conn of registry.values()) conn.close(CloseCode.goingAway, "server shutting down");
    // Close events arrive on later turns: wait for them (bounded), then for each socket's bookkeeping,
    // so unacked envelopes reach the offline queues before the stores close.
    const deadline = Date.now() + 5000;
    while (registry.size > 0 && Date.now() < deadline) await Bun.sleep(10);
    await this.revalidating;
    await Promise.all(this.closing);
  }
}
