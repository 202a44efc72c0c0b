import type { ActorFactory, ActorRefs, DeviceSockets, SocketRef } from "../../actors/index.ts";
import type { StoredEnvelope } from "../messaging/envelope.ts";
import type { Presence } from "../messaging/presence.ts";
import type { Logger } from "../observability/logger.ts";
import type { SocketRegistry, SocketStatus, SocketTarget } from "./socket-registry.ts";

/** The pinned actor kind (`gateway:<nodeId>`) through which other nodes reach this node's sockets. */
export const GATEWAY_KIND = "gateway";

/** Commands actors send to the gateway of the node that holds a socket. */
export type GatewayCommand =
  | { type: "push"; userId: string; deviceId: number; connectionId: string; envelopes: StoredEnvelope[] }
  | ({ type: "close"; code: number; reason: string } & SocketTarget)
  | { type: "status"; userId: string; deviceId: number; connectionId: string }
  | { type: "drain"; userId: string; deviceId: number; connectionId: string };

/** What a node link needs besides the actors: who to tell when a pushed-to socket has vanished. */
export interface NodeLinkDeps {
  nodeId: string;
  actors: ActorRefs;
  registry: SocketRegistry;
  /** Socket leases: which nodes hold a user's sockets. */
  presence: Presence;
  /** A push found no socket here: the user actor must queue those envelopes for the device. */
  onVanished(device: { userId: string; deviceId: number }, connectionId: string): Promise<void>;
  /**
   * A user actor asks this node's socket to read its offline queue again (`Gateway.drainAgain`);
   * false when the connection is not open here.
   */
  drainAgain(userId: string, deviceId: number, connectionId: string): boolean;
  /**
   * A push or drain command for a socket on a node taken for dead was dropped by the node that
   * adopted its inbox (`orphaned`): the device's user actor must look for the socket again
   * (`push.failed`), which may still be open (MessagingService.pushLost).
   */
  onPushLost?(device: { userId: string; deviceId: number }, connectionId: string): Promise<void>;
  logger: Logger;
}

/**
 * How a push reaches a socket on any node. This node's sockets are in its `SocketRegistry`; another
 * node's are reached through that node's pinned `gateway:<nodeId>` actor over the durable actor
 * transport. This is the `DeviceSockets` port the user actors are built with.
 */
export class NodeLink implements DeviceSockets {
  constructor(private readonly deps: NodeLinkDeps) {}

  /** The behaviour of this node's pinned gateway actor: runs commands from other nodes here. */
  readonly actorFactory: ActorFactory = () => ({
    receive: (command: GatewayCommand) => this.handle(command),
  });

  /**
   * Runs a command against this node's sockets: for push, close and drain, whether a socket here
   * took it; for status, the socket's status.
   */
  handle(command: GatewayCommand): boolean | SocketStatus {
    const { registry } = this.deps;
    switch (command.type) {
      case "status":
        return registry.status(command.userId, command.deviceId, command.connectionId);
      case "close":
        return registry.close(command, command.code, command.reason);
      case "push": {
        const pushed = registry.push(
          command.userId,
          command.deviceId,
          command.connectionId,
          command.envelopes,
        );
        if (!pushed) this.vanished(command);
        return pushed;
      }
      case "drain": {
        const taken = this.deps.drainAgain(command.userId, command.deviceId, command.connectionId);
        // Held by its user actor until it reports drained: a socket gone meanwhile must say so.
        if (!taken) this.vanished(command);
        return taken;
      }
    }
  }

  /**
   * A command for a socket on another node that this node's actor system dropped: it waited in that
   * node's inbox, which this node adopted when it took the node for dead (ActorSystem.registerPinned's
   * `orphaned`). The node may be alive after all (a heartbeat that lapsed under load), its socket
   * open: a lost push or drain is told to the device's user actor, which looks for the socket again
   * before it queues the envelopes. A lost close is left to the socket's node's revalidation; a
   * status ask was answered with the error already.
   */
  orphaned(command: GatewayCommand): void {
    if (command.type !== "push" && command.type !== "drain") return;
    const device = { userId: command.userId, deviceId: command.deviceId };
    void this.deps
      .onPushLost?.(device, command.connectionId)
      .catch((error) => this.deps.logger.warn({ err: error }, "could not report a lost push"));
  }

  /** Reports to the device's user actor that a command found its connection gone here. */
  private vanished(command: { userId: string; deviceId: number; connectionId: string }): void {
    const device = { userId: command.userId, deviceId: command.deviceId };
    void this.deps
      .onVanished(device, command.connectionId)
      .catch((error) => this.deps.logger.warn({ err: error }, "could not report a vanished socket"));
  }

  /**
   * Sends a command to a node's gateway (this one included). For this node: whether a socket took
   * it. For another: whether it is on its way (false when that node is not a cluster member). A
   * tell, not an ask: the transport is durable, and a socket found missing there is reported back
   * to its user actor as a disconnect, so a slow node delays delivery instead of failing it.
   */
  async send(nodeId: string, command: GatewayCommand): Promise<boolean> {
    if (nodeId === this.deps.nodeId) return this.handle(command) === true;
    return this.deps.actors.tell(`${GATEWAY_KIND}:${nodeId}`, command).then(
      () => true,
      () => false,
    );
  }

  /** Closes the sockets a target names on every node that holds one (from the leases) and this one. */
  async close(target: SocketTarget, code: number, reason: string): Promise<void> {
    const leases = await this.deps.presence.sockets(target.userId);
    const nodes = new Set([this.deps.nodeId, ...leases.map((s) => s.nodeId)]);
    await Promise.all(
      [...nodes].map((nodeId) =>
        this.send(nodeId, { type: "close", ...target, code, reason }).catch(() => false),
      ),
    );
  }

  // DeviceSockets, for the user actors

  push(socket: SocketRef, userId: string, envelopes: readonly StoredEnvelope[]): Promise<boolean> {
    return this.send(socket.nodeId, {
      type: "push",
      userId,
      deviceId: socket.deviceId,
      connectionId: socket.connectionId,
      envelopes: [...envelopes],
    });
  }

  /**
   * `DeviceSockets.pushHere`: pushes to a socket of this node's registry at once (as `push` does
   * for one, without its promise or command object); undefined for another node's socket.
   */
  pushHere(socket: SocketRef, userId: string, envelopes: readonly StoredEnvelope[]): boolean | undefined {
    if (socket.nodeId !== this.deps.nodeId) return undefined;
    const { deviceId, connectionId } = socket;
    const pushed = this.deps.registry.push(userId, deviceId, connectionId, envelopes);
    if (!pushed) this.vanished({ userId, deviceId, connectionId });
    return pushed;
  }

  /** Sends a `drain` command to the socket's node (see `DeviceSockets.drainAgain`). */
  drainAgain(socket: SocketRef, userId: string): Promise<boolean> {
    return this.send(socket.nodeId, {
      type: "drain",
      userId,
      deviceId: socket.deviceId,
      connectionId: socket.connectionId,
    });
  }

  /**
   * Where a socket stands (`DeviceSockets.status`): this node's registry answers for its own
   * sockets; another node's gateway is asked (3 s). `unreachable` when that ask fails (the node not
   * a member, the ask refused or timed out), unlike `gone`, which the socket's node answered.
   */
  async status(socket: SocketRef, userId: string): Promise<SocketStatus | "unreachable"> {
    const { deviceId, connectionId } = socket;
    if (socket.nodeId === this.deps.nodeId) return this.deps.registry.status(userId, deviceId, connectionId);
    const command: GatewayCommand = { type: "status", userId, deviceId, connectionId };
    return this.deps.actors
      .ask<SocketStatus>(`${GATEWAY_KIND}:${socket.nodeId}`, command, { timeoutMs: 3000 })
      .catch(() => "unreachable" as const);
  }

  closeAll(userId: string, code: number, reason: string): Promise<void> {
    return this.close({ userId }, code, reason);
  }

  async open(userId: string): Promise<SocketRef[]> {
    return (await this.deps.presence.sockets(userId)).map(({ deviceId, nodeId, connectionId }) => ({
      deviceId,
      nodeId,
      connectionId,
    }));
  }
}
