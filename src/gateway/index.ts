export { DeviceConnection, type DeviceSocket, type SocketData } from "./connection.ts";
export { FrameHandler } from "./frame-handler.ts";
export { Gateway, type GatewayOptions } from "./gateway.ts";
export { GATEWAY_KIND, type GatewayCommand, NodeLink, type NodeLinkDeps } from "./node-link.ts";
export { DEFAULT_NODE_WATCH_LIMIT, PresenceWatchers, type WatchStats } from "./presence-watch.ts";
export { SocketRegistry, type SocketStatus, type SocketTarget } from "./socket-registry.ts";
export { TokenBucket } from "./token-bucket.ts";
