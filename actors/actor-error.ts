/** Base class for actor-runtime errors: a stable `code` callers can map to protocol errors. */
export class ActorError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ActorError";
  }
}

/** The target actor's mailbox is at capacity: the caller should slow down (maps to `rate_limited`). */
export class MailboxFullError extends ActorError {
  constructor(readonly key: string) {
    super("mailbox_full", `mailbox of ${key} is full`);
    this.name = "MailboxFullError";
  }
}

/** The actor was stopped (e.g. by erasure) before it processed the message. */
export class ActorStoppedError extends ActorError {
  constructor(readonly key: string) {
    super("actor_stopped", `actor ${key} was stopped`);
    this.name = "ActorStoppedError";
  }
}

/** No factory is registered for the key's kind (the part before the first `:`). */
export class UnknownActorKindError extends ActorError {
  constructor(readonly key: string) {
    super("unknown_kind", `no actor kind registered for key ${key}`);
    this.name = "UnknownActorKindError";
  }
}

/** A request to an actor got no reply in time; the request may still be processed later. */
export class AskTimeoutError extends ActorError {
  constructor(
    readonly key: string,
    timeoutMs: number,
  ) {
    super("ask_timeout", `no reply from ${key} within ${timeoutMs} ms`);
    this.name = "AskTimeoutError";
  }
}

/** The destination node's queue no longer exists (it left or was adopted): re-route and retry. */
export class UnroutableError extends ActorError {
  constructor(readonly nodeId: string) {
    super("unroutable", `node ${nodeId} has no queue`);
    this.name = "UnroutableError";
  }
}

/** The node is shutting down or was aborted and takes no more messages. */
export class NodeStoppedError extends ActorError {
  constructor(nodeId: string) {
    super("node_stopped", `node ${nodeId} is stopped`);
    this.name = "NodeStoppedError";
  }
}

/** The named node is not a live cluster member. */
export class UnknownNodeError extends ActorError {
  constructor(readonly nodeId: string) {
    super("not_found", `node ${nodeId} is not a cluster member`);
    this.name = "UnknownNodeError";
  }
}

/** Error raised remotely, rebuilt on the asking node from its code and message. */
export class RemoteActorError extends ActorError {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = "RemoteActorError";
  }
}
