/** What a watcher is told about a user (docs/PROTOCOL.md, server → client `presence`). */
export interface PresenceState {
  user: string;
  online: boolean;
  /** Last time any of the user's devices was connected (Unix ms); 0 when never. */
  lastSeen: number;
}

/** One open socket of a device: the node holding it and that node's id for the connection. */
export interface DeviceSocketRef {
  userId: string;
  deviceId: number;
  nodeId: string;
  connectionId: string;
}

/** A lease's member name; node ids never contain "|". */
export function leaseMember(ref: DeviceSocketRef): string {
  return `${ref.deviceId}|${ref.nodeId}|${ref.connectionId}`;
}

/** The socket a lease member names. */
export function parseLeaseMember(userId: string, member: string): DeviceSocketRef | undefined {
  const [device, nodeId, connectionId] = member.split("|");
  const deviceId = Number(device);
  if (!Number.isInteger(deviceId) || !nodeId || !connectionId) return undefined;
  return { userId, deviceId, nodeId, connectionId };
}

/**
 * Presence: online while any device is connected, `lastSeen` otherwise. Connected devices are
 * leased: the node holding the socket renews the lease, so a crashed node's devices go offline
 * when their leases run out.
 */
export interface Presence {
  readonly kind: string;
  /** Marks sockets as connected for one more lease period (connect and periodic renewal). */
  connected(sockets: DeviceSocketRef[]): Promise<void>;
  /** The socket closed: its lease ends now. */
  disconnected(socket: DeviceSocketRef): Promise<void>;
  /** The user's sockets whose lease is running: which node holds each device. */
  sockets(userId: string): Promise<DeviceSocketRef[]>;
  /** Current state of each user. */
  states(userIds: string[]): Promise<PresenceState[]>;
  /** Subscribes to changes published by any node; returns the unsubscribe function. */
  subscribe(listener: (state: PresenceState) => void): () => void;
  /** Removes everything held about the user (erasure); returns the number of keys removed. */
  eraseUser(userId: string): Promise<number>;
  close(): Promise<void>;
}
