import { randomUUID } from "node:crypto";
import type { ServerWebSocket } from "bun";
import { Elysia } from "elysia";
import { bearerToken } from "../http/auth.ts";
import { ApiError } from "../http/errors.ts";
import type { StoredEnvelope } from "../messaging/envelope.ts";
import type { OfflineQueue } from "../messaging/offline-queue.ts";
import type { DeviceSocketRef, Presence, PresenceState } from "../messaging/presence.ts";
import type { MessagingService, SubmittedSend } from "../messaging/service.ts";
import type { Logger } from "../observability/logger.ts";
import type { Principal, SessionService } from "../sessions/service.ts";
import { CloseCode, DeviceConnection } from "./connection.ts";
import {
  checkAck,
  checkDirectSend,
  checkGroupSend,
  checkPing,
  checkPresenceWatch,
  firstProblem,
  MAX_FRAME_BYTES,
} from "./frames.ts";
import type { GatewayCommand, NodeLink, SocketStatus } from "./node-link.ts";
import { TokenBucket } from "./token-bucket.ts";

export interface GatewayOptions {
  nodeId: string;
  sessions: SessionService;
  messaging: MessagingService;
  offline: OfflineQueue;
  presence: Presence;
  logger: Logger;
  /** Reaches other nodes' gateways (to replace a device's socket held elsewhere). */
  link: () => NodeLink;
  /** Frames a device may send per second, and how many it may save up. */
  rateLimit?: { perSecond: number; burst: number };
  /** How long a socket's presence lease lasts without renewal. */
  presenceLeaseMs?: number;
}

/** What the gateway keeps on a Bun socket: who it is, and the handlers Elysia's websocket dispatcher calls. */
interface SocketData {
  principal: Principal;
  open(ws: ServerWebSocket<SocketData>): void;
  message(ws: ServerWebSocket<SocketData>, message: string | Buffer): void;
  close(ws: ServerWebSocket<SocketData>): void;
}

/** Envelopes taken from the offline queue per read while a device drains it. */
const DRAIN_CHUNK = 256;

/**
 * The WebSocket gateway: one socket per device, frames validated against protocol.md, sends handed
 * to the messaging service in arrival order, offline queue drained before live delivery.
 */
export class Gateway {
  private readonly sockets = new Map<string, DeviceConnection>();
  private readonly byWs = new WeakMap<ServerWebSocket<unknown>, DeviceConnection>();
  private readonly watchers = new Map<string, Set<DeviceConnection>>();
  private readonly lastPresence = new Map<string, string>();
  /** Disconnect bookkeeping still running (presence, offline flush), awaited by stop(). */
  private readonly closing = new Set<Promise<void>>();
  private readonly unsubscribe: () => void;
  private readonly renewTimer: ReturnType<typeof setInterval>;
  private readonly rate: { perSecond: number; burst: number };

  constructor(private readonly options: GatewayOptions) {
    this.rate = options.rateLimit ?? { perSecond: 100, burst: 200 };
    this.unsubscribe = options.presence.subscribe((state) => this.presenceChanged(state));
    const leaseMs = options.presenceLeaseMs ?? 60_000;
    this.renewTimer = setInterval(() => void this.renew(), Math.max(100, Math.floor(leaseMs / 3)));
    this.renewTimer.unref?.();
  }

  /** Open sockets on this node. */
  get connections(): number {
    return this.sockets.size;
  }

  /**
   * The Elysia plugin serving `GET /v1/ws`: authenticates before the upgrade (401 otherwise), then
   * hands the socket to Bun directly, so frames reach the gateway as text without Elysia's parsing.
   */
  routes() {
    const { sessions } = this.options;
    const handlers = {
      open: (ws: ServerWebSocket<SocketData>) => this.open(ws as ServerWebSocket<unknown>, ws.data.principal),
      message: (ws: ServerWebSocket<SocketData>, message: string | Buffer) =>
        this.message(ws as ServerWebSocket<unknown>, message),
      close: (ws: ServerWebSocket<SocketData>) => this.closed(ws as ServerWebSocket<unknown>),
    };
    return new Elysia({ name: "clearbox.gateway" }).get(
      "/v1/ws",
      async ({ request, server, headers, query }) => {
        const token = bearerToken(
          headers.authorization,
          typeof query.token === "string" ? query.token : undefined,
        );
        if (!token) throw new ApiError("unauthorized", "missing bearer token");
        const principal = await sessions.authenticate(token);
        const data: SocketData = { principal, ...handlers };
        if (!server?.upgrade(request, { data }))
          throw new ApiError("invalid", "expected a WebSocket upgrade request");
        return undefined;
      },
    );
  }

  private open(ws: ServerWebSocket<unknown>, principal: Principal) {
    const conn = new DeviceConnection(
      ws,
      principal,
      new TokenBucket(this.rate.perSecond, this.rate.burst),
      randomUUID(),
    );
    this.byWs.set(ws, conn);
    const previous = this.sockets.get(conn.key);
    this.sockets.set(conn.key, conn);
    previous?.close(CloseCode.replaced, "replaced by a newer connection of this device");
    conn.chain = conn.chain
      .then(() => this.bringOnline(conn))
      .catch((error) => {
        this.options.logger.error({ err: error, user: principal.userId }, "could not bring a device online");
        conn.close(1011, "internal error");
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

  /** Presence, replacing a socket of the same device on another node, offline queue, then live. */
  private async bringOnline(conn: DeviceConnection): Promise<void> {
    const { presence, messaging, offline, nodeId } = this.options;
    const { principal } = conn;
    await presence.connected([this.ref(conn)]);
    for (const other of await presence.sockets(principal.userId)) {
      if (other.deviceId !== principal.deviceId || other.connectionId === conn.connectionId) continue;
      if (other.nodeId === nodeId) continue;
      await this.options
        .link()
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
    if (conn.isClosed()) return;
    conn.state = "draining";
    conn.drain = await offline.drain(principal.userId, principal.deviceId);
    for (;;) {
      if (conn.isClosed()) return;
      const batch = await conn.drain.next(DRAIN_CHUNK);
      if (batch.length === 0) break;
      conn.deliver(batch);
    }
    if (conn.isClosed()) return;
    await messaging.deviceDrained(principal, nodeId, conn.connectionId);
    if (!conn.isClosed()) conn.state = "live";
  }

  private message(ws: ServerWebSocket<unknown>, message: unknown): void {
    const conn = this.byWs.get(ws);
    if (!conn || conn.state === "closed") return;
    const text =
      typeof message === "string" ? message : message instanceof Uint8Array ? null : String(message);
    if (text === null)
      return void conn.send({ type: "error", code: "invalid", message: "frames are JSON text" });
    if (text.length > MAX_FRAME_BYTES || Buffer.byteLength(text) > MAX_FRAME_BYTES) {
      return void conn.send({
        type: "error",
        code: "too_large",
        message: `frames are at most ${MAX_FRAME_BYTES} bytes`,
      });
    }
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      return void conn.send({ type: "error", code: "invalid", message: "frame is not valid JSON" });
    }
    const type = (frame as { type?: unknown } | null)?.type;
    const id = (frame as { id?: unknown } | null)?.id;
    if (!conn.bucket.take()) {
      if (type === "send" && typeof id === "string")
        return void conn.send({ type: "rejected", id, code: "rate_limited" });
      return void conn.send({ type: "error", code: "rate_limited", message: "too many frames; slow down" });
    }
    switch (type) {
      case "send":
        this.send(conn, frame, typeof id === "string" ? id : undefined);
        break;
      case "ack":
        if (checkAck.Check(frame)) {
          const acking = this.ack(conn, frame.ids);
          conn.acking.add(acking);
          void acking.finally(() => conn.acking.delete(acking));
        } else this.invalid(conn, firstProblem(checkAck, frame));
        break;
      case "presence.watch":
        if (checkPresenceWatch.Check(frame)) void this.watch(conn, frame.users);
        else this.invalid(conn, firstProblem(checkPresenceWatch, frame));
        break;
      case "ping":
        if (checkPing.Check(frame)) conn.send({ type: "pong" });
        else this.invalid(conn, firstProblem(checkPing, frame));
        break;
      default:
        this.invalid(conn, "unknown frame type");
    }
  }

  private invalid(conn: DeviceConnection, message: string) {
    conn.send({ type: "error", code: "invalid", message });
  }

  private send(conn: DeviceConnection, frame: unknown, id: string | undefined) {
    const { messaging, logger } = this.options;
    let submit: () => Promise<SubmittedSend>;
    if (checkDirectSend.Check(frame)) submit = () => messaging.submitDirect(conn.principal, frame);
    else if (checkGroupSend.Check(frame)) {
      submit = async () => ({ outcome: messaging.sendGroup(conn.principal, frame) });
    } else {
      const to = (frame as { to?: { group?: unknown } }).to;
      const check = to && typeof to === "object" && "group" in to ? checkGroupSend : checkDirectSend;
      const problem = firstProblem(check, frame);
      if (id === undefined) return this.invalid(conn, problem);
      return void conn.send({ type: "rejected", id, code: "invalid", message: problem });
    }
    const failed = (error: unknown) => {
      logger.error({ err: error, user: conn.principal.userId }, "send failed");
      conn.send({
        type: "error",
        code: "internal",
        message: `message ${id} was not accepted; send it again`,
      });
    };
    // A device's sends are checked and queued for commit one after another, so they are accepted
    // in the order sent; the chain waits for the queueing, not for the commit. A group send waits
    // for its answer (its group actor orders it against other members' sends).
    conn.chain = conn.chain.then(async () => {
      try {
        const { outcome } = await submit();
        const reply = outcome.then((answer) => void conn.send(answer), failed);
        if (checkGroupSend.Check(frame)) await reply;
      } catch (error) {
        failed(error);
      }
    });
  }

  private async ack(conn: DeviceConnection, ids: string[]) {
    try {
      await conn.drain?.ack(ids);
      await this.options.messaging.ack(conn.principal, ids);
    } catch (error) {
      this.options.logger.error({ err: error, user: conn.principal.userId }, "ack failed");
    }
  }

  private async watch(conn: DeviceConnection, users: string[]) {
    for (const user of conn.watching) this.watchers.get(user)?.delete(conn);
    conn.watching.clear();
    for (const user of users) {
      conn.watching.add(user);
      let set = this.watchers.get(user);
      if (!set) {
        set = new Set();
        this.watchers.set(user, set);
      }
      set.add(conn);
    }
    for (const state of await this.options.presence.states(users)) {
      this.lastPresence.set(state.user, presenceSignature(state));
      conn.send({ type: "presence", ...state });
    }
  }

  private presenceChanged(state: PresenceState) {
    const watchers = this.watchers.get(state.user);
    if (!watchers || watchers.size === 0) return;
    const signature = presenceSignature(state);
    if (this.lastPresence.get(state.user) === signature) return;
    this.lastPresence.set(state.user, signature);
    for (const conn of watchers) conn.send({ type: "presence", ...state });
  }

  private closed(ws: ServerWebSocket<unknown>) {
    const conn = this.byWs.get(ws);
    if (!conn) return;
    conn.state = "closed";
    if (this.sockets.get(conn.key) === conn) this.sockets.delete(conn.key);
    for (const user of conn.watching) this.watchers.get(user)?.delete(conn);
    const { presence, messaging, nodeId, logger } = this.options;
    // After whatever the connection was doing: its envelopes in flight must reach the actor first.
    // Acks sent just before the close go first: otherwise the actor would flush those envelopes
    // to the offline queue and the device would get them again on its next connection.
    const bookkeeping = Promise.all([conn.chain, ...conn.acking]).then(async () => {
      try {
        await conn.drain?.release();
        await presence.disconnected(this.ref(conn));
        await messaging.deviceDisconnected(conn.principal, nodeId, conn.connectionId);
      } catch (error) {
        logger.error({ err: error, user: conn.principal.userId }, "disconnect bookkeeping failed");
      }
    });
    this.closing.add(bookkeeping);
    void bookkeeping.finally(() => this.closing.delete(bookkeeping));
  }

  /** Renews presence leases of every local socket, and re-reads watched users (a crashed node's leases expire). */
  private async renew() {
    try {
      await this.options.presence.connected([...this.sockets.values()].map((c) => this.ref(c)));
      const watched = [...this.watchers.keys()].filter((u) => (this.watchers.get(u)?.size ?? 0) > 0);
      for (const state of await this.options.presence.states(watched)) this.presenceChanged(state);
    } catch (error) {
      this.options.logger.warn({ err: error }, "presence renewal failed");
    }
  }

  /** Where one of this node's sockets stands. */
  status(userId: string, deviceId: number, connectionId: string): SocketStatus {
    const conn = this.sockets.get(`${userId}.${deviceId}`);
    if (!conn || conn.connectionId !== connectionId || conn.isClosed()) return "gone";
    return conn.state === "live" ? "live" : "pending";
  }

  /**
   * Handles a command from an actor (this node's or another's): for push and close, whether a
   * socket here took it; for status, the socket's status.
   */
  handle(command: GatewayCommand): boolean | SocketStatus {
    if (command.type === "status") return this.status(command.userId, command.deviceId, command.connectionId);
    if (command.type === "push") {
      const pushed = this.push(command.userId, command.deviceId, command.connectionId, command.envelopes);
      if (!pushed) {
        // The socket went away before this arrived: its user actor must queue these for the device.
        const device = { userId: command.userId, deviceId: command.deviceId };
        void this.options.messaging
          .deviceDisconnected(device, this.options.nodeId, command.connectionId)
          .catch((error) => this.options.logger.warn({ err: error }, "could not report a vanished socket"));
      }
      return pushed;
    }
    let closed = false;
    for (const conn of this.sockets.values()) {
      if (conn.principal.userId !== command.userId) continue;
      if (command.deviceId !== undefined && conn.principal.deviceId !== command.deviceId) continue;
      if (command.connectionId !== undefined && conn.connectionId !== command.connectionId) continue;
      conn.close(command.code, command.reason);
      closed = true;
    }
    return closed;
  }

  /** Delivers envelopes to a local socket; false when that connection is not open here any more. */
  push(
    userId: string,
    deviceId: number,
    connectionId: string,
    envelopes: readonly StoredEnvelope[],
  ): boolean {
    const conn = this.sockets.get(`${userId}.${deviceId}`);
    if (!conn || conn.connectionId !== connectionId || conn.state === "closed") return false;
    return conn.deliver(envelopes);
  }

  /** Closes every socket (shutdown): clients reconnect, possibly to another node. */
  async stop(): Promise<void> {
    clearInterval(this.renewTimer);
    this.unsubscribe();
    for (const conn of this.sockets.values()) conn.close(CloseCode.goingAway, "server shutting down");
    // Close events arrive on later turns: wait for them (bounded), then for each socket's bookkeeping,
    // so unacked envelopes reach the offline queues before the stores close.
    const deadline = Date.now() + 5000;
    while (this.sockets.size > 0 && Date.now() < deadline) await Bun.sleep(10);
    await Promise.all(this.closing);
  }
}

/** What a watcher must hear about: going online, or going offline (with when). Lease renewals are not news. */
function presenceSignature(state: PresenceState): string {
  return state.online ? "online" : `offline:${state.lastSeen}`;
}
