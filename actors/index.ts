export {
  Actor,
  type ActorBehavior,
  type ActorContext,
  type ActorFactory,
  type ActorRefs,
  type ActorStatus,
  type PassivationReason,
} from "./actor.ts";
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
} from "./actor-error.ts";
export {
  type ActorCensus,
  ActorSystem,
  type ActorSystemOptions,
  type ActorSystemStats,
  type ClusterNodeView,
  type ClusterView,
  type NodesGone,
} from "./actor-system.ts";
export {
  AMQP_HEARTBEAT_SECONDS,
  AMQP_RETRY_HIGH_MS,
  AMQP_RETRY_LOW_MS,
  amqpCode,
  BrokerUnreachableError,
  closeQuietly,
  openAmqpConnection,
  withChannel,
} from "./amqp-connect.ts";
export { AmqpTransport, type AmqpTransportOptions } from "./amqp-transport.ts";
export { type ActorNodeOptions, createActorNode } from "./create-actor-node.ts";
export { type Deadline, FixedDeadlines, settledWithin } from "./deadlines.ts";
export {
  GroupActor,
  type GroupActorPorts,
  type GroupMessage,
  type GroupSendMessage,
  type GroupSendResult,
  groupActorFactory,
} from "./group-actor.ts";
export { InMemoryMembership, MembershipHub } from "./in-memory-membership.ts";
export { InMemoryTransport, TransportHub } from "./in-memory-transport.ts";
export { GROUP_KIND, groupKey, USER_KIND, userKey } from "./keys.ts";
export { type Logger, silentLogger } from "./logger.ts";
export { Mailbox } from "./mailbox.ts";
export type { MemberInfo, MemberStats, MemberStatus, Membership, MembershipListener } from "./membership.ts";
export type {
  Clock,
  DeviceSockets,
  EnvelopeLog,
  EnvelopeRef,
  GroupDirectory,
  GroupEnvelope,
  GroupMembersCache,
  OfflineQueue,
  SocketRef,
  StoredBytesQuota,
  StoredEnvelope,
} from "./ports.ts";
export { envelopeKey, systemClock } from "./ports.ts";
export {
  closeRedis,
  REDIS_STALL_LIMITS,
  RedisMembership,
  type RedisMembershipOptions,
} from "./redis-membership.ts";
export { DEFAULT_VNODES, Ring } from "./ring.ts";
export type { Frame, FrameHandler, Transport } from "./transport.ts";
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
  type ErasePeerMessage,
  type QueueEmptiedMessage,
  UserActor,
  type UserActorPorts,
  type UserMessage,
  userActorFactory,
} from "./user-actor.ts";
