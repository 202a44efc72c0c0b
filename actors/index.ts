export {
  Actor,
  type ActorBehavior,
  type ActorContext,
  type ActorFactory,
  type ActorRefs,
  type ActorStatus,
  type PassivationReason,
} from "./Actor.ts";
export {
  ActorError,
  ActorStoppedError,
  AskTimeoutError,
  MailboxFullError,
  NodeStoppedError,
  RemoteActorError,
  UnknownActorKindError,
  UnknownNodeError,
  UnroutableError,
} from "./ActorError.ts";
export {
  ActorSystem,
  type ActorSystemOptions,
  type ActorSystemStats,
  type ClusterNodeView,
  type ClusterView,
} from "./ActorSystem.ts";
export { AmqpTransport, type AmqpTransportOptions } from "./AmqpTransport.ts";
export { type ActorNodeOptions, createActorNode } from "./createActorNode.ts";
export {
  GroupActor,
  type GroupActorPorts,
  type GroupMembershipMessage,
  type GroupMessage,
  type GroupSendMessage,
  type GroupSendResult,
  groupActorFactory,
} from "./GroupActor.ts";
export { InMemoryMembership, MembershipHub } from "./InMemoryMembership.ts";
export { InMemoryTransport, TransportHub } from "./InMemoryTransport.ts";
export { type Logger, silentLogger } from "./Logger.ts";
export { Mailbox } from "./Mailbox.ts";
export type { MemberInfo, MemberStats, MemberStatus, Membership, MembershipListener } from "./Membership.ts";
export type {
  Clock,
  DeviceSockets,
  EnvelopeLog,
  GroupDirectory,
  OfflineQueue,
  SocketRef,
  StoredEnvelope,
} from "./Ports.ts";
export { systemClock } from "./Ports.ts";
export { RedisMembership, type RedisMembershipOptions } from "./RedisMembership.ts";
export { DEFAULT_VNODES, Ring } from "./Ring.ts";
export type { Frame, FrameHandler, Transport } from "./Transport.ts";
export {
  type DeliverGroupMessage,
  type DeliverMessage,
  type DeviceAckMessage,
  type DeviceConnectMessage,
  type DeviceDisconnectMessage,
  type DeviceDrainedMessage,
  type DeviceRemovedMessage,
  ERASED_CLOSE_CODE,
  type EraseMessage,
  UserActor,
  type UserActorPorts,
  type UserMessage,
  userActorFactory,
} from "./UserActor.ts";
