import type { ActorBehavior, ActorContext } from "./Actor.ts";
import { ActorError } from "./ActorError.ts";
import type { Clock, DeviceSockets, EnvelopeLog, OfflineQueue, Presence } from "./Ports.ts";

/** A ciphertext as it travels between actors (JSON): body in base64. */
export interface WireCiphertext {
  /** Recipient device; omitted for a group (sender-key) ciphertext that goes to every device. */
  deviceId?: number;
  type: number;
  body: string;
}

/** Hand a message to the recipient user's actor; it answers once the message is durable. */
export interface DeliverMessage {
  type: "deliver";
  id: string;
  from: { user: string; device: number };
  group?: string;
  ts: number;
  ciphertexts: WireCiphertext[];
}

/** A device's socket opened on `gatewayNode`. */
export interface DeviceConnectMessage {
  type: "device.connect";
  deviceId: number;
  gatewayNode: string;
}

/** A device's socket on `gatewayNode` closed. */
export interface DeviceDisconnectMessage {
  type: "device.disconnect";
  deviceId: number;
  gatewayNode: string;
}

/** A device acknowledged envelopes. */
export interface DeviceAckMessage {
  type: "ack";
  deviceId: number;
  ids: string[];
}

/** Erasure: close every socket of the user and stop the actor. */
export interface EraseMessage {
  type: "erase";
  erasureId: string;
}

/** Everything a user actor handles. */
export type UserMessage =
  | DeliverMessage
  | DeviceConnectMessage
  | DeviceDisconnectMessage
  | DeviceAckMessage
  | EraseMessage;

/** Ports a user actor uses; `src/` provides them. */
export interface UserActorPorts {
  log: EnvelopeLog;
  offline: OfflineQueue;
  sockets: DeviceSockets;
  presence: Presence;
  clock: Clock;
}

/**
 * The actor of one user: knows which gateway node holds each online device's socket.
 * Delivery (log append, push, pending set, offline flush) arrives with the messaging issue.
 */
export class UserActor implements ActorBehavior<UserMessage, unknown> {
  /** deviceId → gateway node holding its socket. */
  readonly devices = new Map<number, string>();

  constructor(
    readonly userId: string,
    private readonly ports: UserActorPorts,
  ) {}

  async receive(message: UserMessage, ctx: ActorContext): Promise<unknown> {
    switch (message.type) {
      case "device.connect":
        return this.connect(message);
      case "device.disconnect":
        return this.disconnect(message);
      case "erase":
        await this.ports.sockets.closeAll(this.userId, "erased");
        ctx.stop("erased");
        return { erased: true };
      case "deliver":
      case "ack":
        throw new ActorError(
          "not_implemented",
          `user actor ${message.type} arrives with the messaging issue`,
        );
      default:
        throw new ActorError("invalid", "unknown user actor message");
    }
  }

  private async connect(message: DeviceConnectMessage): Promise<{ online: number }> {
    const wasOffline = this.devices.size === 0;
    this.devices.set(message.deviceId, message.gatewayNode);
    if (wasOffline) await this.ports.presence.setOnline(this.userId, true, this.ports.clock.now());
    return { online: this.devices.size };
  }

  private async disconnect(message: DeviceDisconnectMessage): Promise<{ online: number }> {
    // A reconnect elsewhere may have overtaken this disconnect: only forget the socket it names.
    if (this.devices.get(message.deviceId) === message.gatewayNode) this.devices.delete(message.deviceId);
    if (this.devices.size === 0)
      await this.ports.presence.setOnline(this.userId, false, this.ports.clock.now());
    return { online: this.devices.size };
  }
}

/** Factory to register as kind `user`. */
export function userActorFactory(ports: UserActorPorts): (id: string) => UserActor {
  return (id) => new UserActor(id, ports);
}
