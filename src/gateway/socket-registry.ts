import type { StoredEnvelope } from "../messaging/envelope.ts";
import { stageTraceOn, stamp } from "../observability/stage-trace.ts";
import type { DeviceConnection } from "./connection.ts";

/** Where one socket stands (see `DeviceSockets.status` in actors): `live` takes pushes. */
export type SocketStatus = "live" | "pending" | "gone";

/**
 * Which sockets a close names: all of a user's, one device's, or one connection; with
 * `generationBelow`, only those authenticated with a token of an older generation than it (a
 * revocation's: a socket opened or re-authenticated with a token issued after it is spared).
 */
export interface SocketTarget {
  userId: string;
  deviceId?: number;
  connectionId?: string;
  generationBelow?: number;
}

/**
 * One user's sockets on this node: the socket itself while it is the user's only one here (the
 * common case; a Map per user would be a few hundred bytes per idle connection), a map by device
 * once there are more.
 */
type UserSockets = DeviceConnection | Map<number, DeviceConnection>;

/**
 * The sockets open on this node, at most one per device, indexed by user: where pushes, closes and
 * status questions from the actors land (directly on this node, through `NodeLink` from others).
 */
export class SocketRegistry {
  private readonly byUser = new Map<string, UserSockets>();
  private count = 0;

  /** Open sockets on this node. */
  get size(): number {
    return this.count;
  }

  /** Every socket on this node. */
  *values(): IterableIterator<DeviceConnection> {
    for (const sockets of this.byUser.values()) {
      if (sockets instanceof Map) yield* sockets.values();
      else yield sockets;
    }
  }

  /** The socket of one device, if it is on this node. */
  get(userId: string, deviceId: number): DeviceConnection | undefined {
    const sockets = this.byUser.get(userId);
    if (sockets instanceof Map) return sockets.get(deviceId);
    return sockets?.principal.deviceId === deviceId ? sockets : undefined;
  }

  /** Registers a new socket for its device; returns the socket it replaces, if any. */
  add(conn: DeviceConnection): DeviceConnection | undefined {
    const { userId, deviceId } = conn.principal;
    const sockets = this.byUser.get(userId);
    if (sockets === undefined) {
      this.byUser.set(userId, conn);
      this.count++;
      return undefined;
    }
    if (!(sockets instanceof Map)) {
      if (sockets.principal.deviceId === deviceId) {
        this.byUser.set(userId, conn);
        return sockets;
      }
      this.byUser.set(
        userId,
        new Map([
          [sockets.principal.deviceId, sockets],
          [deviceId, conn],
        ]),
      );
      this.count++;
      return undefined;
    }
    const previous = sockets.get(deviceId);
    sockets.set(deviceId, conn);
    if (!previous) this.count++;
    return previous;
  }

  /** Forgets a closed socket, unless a newer socket of the device has replaced it already. */
  remove(conn: DeviceConnection): void {
    const { userId, deviceId } = conn.principal;
    const sockets = this.byUser.get(userId);
    if (sockets === conn) {
      this.byUser.delete(userId);
      this.count--;
      return;
    }
    if (!(sockets instanceof Map) || sockets.get(deviceId) !== conn) return;
    sockets.delete(deviceId);
    this.count--;
    if (sockets.size === 0) this.byUser.delete(userId);
    else if (sockets.size === 1) this.byUser.set(userId, sockets.values().next().value as DeviceConnection);
  }

  /** Where one connection stands; `gone` when it is not open here. */
  status(userId: string, deviceId: number, connectionId: string): SocketStatus {
    const conn = this.get(userId, deviceId);
    if (!conn || conn.connectionId !== connectionId || conn.isClosed()) return "gone";
    return conn.state === "live" ? "live" : "pending";
  }

  /** Delivers envelopes to one connection; false when that connection is not open here any more. */
  push(
    userId: string,
    deviceId: number,
    connectionId: string,
    envelopes: readonly StoredEnvelope[],
  ): boolean {
    const conn = this.get(userId, deviceId);
    if (!conn || conn.connectionId !== connectionId || conn.isClosed()) return false;
    if (stageTraceOn) for (const e of envelopes) stamp(e.id, "push");
    return conn.deliver(envelopes, "live");
  }

  /** Closes the sockets the target names with `code`; true when there was at least one. */
  close(target: SocketTarget, code: number, reason: string): boolean {
    const sockets = this.byUser.get(target.userId);
    if (!sockets) return false;
    let closed = false;
    for (const conn of sockets instanceof Map ? [...sockets.values()] : [sockets]) {
      if (target.deviceId !== undefined && conn.principal.deviceId !== target.deviceId) continue;
      if (target.connectionId !== undefined && conn.connectionId !== target.connectionId) continue;
      if (target.generationBelow !== undefined && conn.ws.data.generation >= target.generationBelow) continue;
      conn.close(code, reason);
      closed = true;
    }
    return closed;
  }
}
