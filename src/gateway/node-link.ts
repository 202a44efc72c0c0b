import type { StoredEnvelope } from "../messaging/envelope.ts";

/** Commands one node's actors send to the gateway of the node that holds a socket. */
export type GatewayCommand =
  | { type: "push"; userId: string; deviceId: number; connectionId: string; envelopes: StoredEnvelope[] }
  | { type: "close"; userId: string; deviceId?: number; connectionId?: string; code: number; reason: string }
  | { type: "status"; userId: string; deviceId: number; connectionId: string };

/** What the gateway says about one socket (see DeviceSockets.status in actors/Ports.ts). */
export type SocketStatus = "live" | "pending" | "gone";

/**
 * Reaches the gateway of a given node (this one included). For this node it answers whether a
 * socket took the command; for another node, whether the command is on its way (false when that
 * node is not a cluster member).
 */
export interface NodeLink {
  send(nodeId: string, command: GatewayCommand): Promise<boolean>;
}
