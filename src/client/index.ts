export {
  ClearBoxClient,
  type ClearBoxClientOptions,
  type IncomingEnvelope,
  REPLENISH_THRESHOLD,
} from "./client.ts";
export * from "./http.ts";
export {
  generateFullUpload,
  generateKyberPreKeys,
  generatePreKeys,
  generateSignedPreKey,
  ONE_TIME_KEY_BATCH,
} from "./keys.ts";
export { KNOWN_GROUPS, readKnownGroups, writeKnownGroups } from "./known-groups.ts";
export {
  type BackoffOptions,
  type ChatMessage,
  type MessageRefusal,
  Messenger,
  type MessengerEvents,
  StoreInUseError,
} from "./messenger.ts";
export * from "./socket.ts";
export { AccountStore } from "./store.ts";
