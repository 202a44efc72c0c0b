import type { StoredEnvelope } from "../messaging/envelope.ts";
import type { DeviceConnection } from "./connection.ts";

/** Where one socket stands (see `DeviceSockets.status` in actors): `live` takes pushes. */
export type SocketStatus = "live" | "pending" | "gone";

/** Which sockets a close names: all of a user's, one device's, or one connection. */
export interface SocketTarget {
  userId: string;
  deviceId?: number;
  connectionId?: string;
}

/**
 * The sockets open on this node, at most one per device, indexed by user: where pushes, closes and
 * status questions from the actors land (directly on this node, through `NodeLink` from others).
 */
export class SocketRegistry {
  private readonly byUser = new Map<string, Map<number, DeviceConnection>>();
  private count = 0;

  /** Open sockets on this node. */
  get size(): number {
    return this.count;
  }

  /** Every socket on this node. */
  *values(): IterableIterator<DeviceConnection> {
    for (const devices of this.byUser.values()) yield* devices.values();
  }

  /** The socket of one device, if it is on this node. */
  get(userId: string, deviceId: number): DeviceConnection | undefined {
    return this.byUser.get(userId)?.get(deviceId);
  }

  /** Registers a new socket for its device; returns the socket it replaces, if any. */
  add(conn: DeviceConnection): DeviceConnection | undefined {
    const { userId, deviceId } = conn.principal;
    let devices = this.byUser.get(userId);
    if (!devices) {
      devices = new Map();
      this.byUser.set(userId, devices);
    }
    const previous = devices.get(deviceId);
    devices.set(deviceId, conn);
    if (!previous) this.count++;
    return previous;
  }

  /** Forgets a closed socket, unless a newer socket of the device has replaced it already. */
  remove(conn: DeviceConnection): void {
    const { userId, deviceId } = conn.principal;
    const devices = this.byUser.get(userId);
    if (devices?.get(deviceId) !== conn) return;
    devices.delete(deviceId);
    this.count--;
    if (devices.size === 0) this.byUser.delete(userId);
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
    return conn.deliver(envelopes, "live");
  }

  /** Closes the sockets the target names with `code`; true when there was at least one. */
  close(target: SocketTarget, code: number, reason: string): boolean {
    const devices = this.byUser.get(target.userId);
    if (!devices) return false;
    let closed = false;
    for (const conn of [...devices.values()]) {
      if (target.deviceId !== undefined && conn.principal.deviceId !== target.deviceId) continue;
      if (target.connectionId !== undefined && conn.connectionId !== target.connectionId) continue;
      conn.close(code, reason);
      closed = true;
    }
    return closed;
  }
}
