/**
 * Ports the actors need from the edges. `src/` implements them with the real stores and the
 * gateway and hands them to the actor factories at start-up; `actors/` never imports `src/`.
 */

/** Time source, injectable so tests can drive idle timeouts and timestamps. */
export interface Clock {
  now(): number;
}

/** The wall clock. */
export const systemClock: Clock = { now: () => Date.now() };

/** One ciphertext addressed to one recipient device, as the durable log keeps it. */
export interface StoredEnvelope {
  /** The sender's message id (UUID); with the sender device it makes a send idempotent. */
  id: string;
  senderUser: string;
  senderDevice: number;
  recipientUser: string;
  recipientDevice: number;
  /** The group it was fanned out for, or null for a 1:1 send. */
  groupId: string | null;
  /** Acceptance time, Unix ms. */
  ts: number;
  /** libsignal ciphertext type (2 whisper, 3 prekey, 7 sender key). */
  type: number;
  /** The ciphertext in standard base64, as on the wire; never logged. */
  body: string;
}

/**
 * What names one envelope of a recipient device: its id together with its sender device. Ids are
 * chosen by senders (docs/PROTOCOL.md), so another sender may use the same id for the same
 * recipient device; an ack, a `queued` mark or a dedupe by id alone would reach their envelope too.
 */
export type EnvelopeRef = Pick<StoredEnvelope, "id" | "senderUser" | "senderDevice">;

/** `senderUser/senderDevice/id`: the key of an envelope among one recipient device's envelopes. */
export function envelopeKey(e: EnvelopeRef): string {
  return `${e.senderUser}/${e.senderDevice}/${e.id}`;
}

/** A group send as the log stores it once: one envelope without a recipient. */
export type GroupEnvelope = Omit<StoredEnvelope, "recipientUser" | "recipientDevice"> & { groupId: string };

/**
 * The part of the durable envelope log the actors use (group commit happens behind `append`).
 * Shaped so `src/messaging`'s EnvelopeLog satisfies it as is.
 */
export interface EnvelopeLog {
  /** Appends durably; per envelope, whether it was new (false: an idempotent re-send). */
  append(envelopes: StoredEnvelope[]): Promise<boolean[]>;
  /**
   * Stores a group send durably, once, with the devices it is for (userId → device ids, fixed at
   * send time); the per-device rows are written later, off the sender's path (docs/MESSAGING.md,
   * "Group messages are stored once"). False when the same sender device sent this id before
   * (an idempotent re-send: nothing stored, nothing to deliver).
   */
  appendGroup(message: GroupEnvelope, recipients: Record<string, number[]>): Promise<boolean>;
  /** Accepted, not acked envelopes of a user, oldest first: what a new owner rebuilds its pending set from. */
  undelivered(
    recipientUser: string,
    options?: { device?: number; state?: "pending" | "queued"; limit?: number },
  ): Promise<StoredEnvelope[]>;
  /** Marks these envelopes of one device `queued` (flushed to its offline queue) if still `pending`. */
  markQueued(
    recipientUser: string,
    recipientDevice: number,
    envelopes: readonly EnvelopeRef[],
  ): Promise<void>;
  /** Acks these envelopes of one device (ciphertext dropped); returns how many were not acked before. */
  ack(recipientUser: string, recipientDevice: number, envelopes: readonly EnvelopeRef[]): Promise<number>;
}

/** Per-device durable offline queue (RabbitMQ in production). */
export interface OfflineQueue {
  /** Resolves once the broker confirmed every envelope. */
  flush(userId: string, deviceId: number, envelopes: readonly StoredEnvelope[]): Promise<void>;
  /** Deletes a device's queue (device removal, erasure). */
  purge(userId: string, deviceId: number): Promise<unknown>;
  /**
   * Deletes a device's queue if no message waits in it (`if-empty`); true when it is gone. Messages
   * a drain took and has not acked do not count, so the caller first checks the log for `queued` ones.
   */
  remove(userId: string, deviceId: number): Promise<boolean>;
}

/** One open socket of a device: the gateway node holding it and that node's id for the connection. */
export interface SocketRef {
  deviceId: number;
  nodeId: string;
  connectionId: string;
}

/** Reaches a device's socket through the gateway node that holds it. */
export interface DeviceSockets {
  /**
   * Pushes envelopes, oldest first, to one connection. False when the socket is known to be gone
   * (its node is not a member). A remote gateway that no longer holds the socket answers later with
   * a `device.disconnect` for that connection, so a slow node delays delivery but never loses it.
   */
  push(socket: SocketRef, userId: string, envelopes: readonly StoredEnvelope[]): Promise<boolean>;
  /**
   * `push` for a socket on this node, done before it returns: true when the socket took the
   * envelopes, false when it is not open here any more (as `push` answers), undefined when the
   * socket is on another node (use `push`). A group message's fan-out pushes to thousands of local
   * sockets, and `push`'s promise per socket (and the actor's bookkeeping of it) was work for an
   * answer already known. Optional: without it every push goes through `push`.
   */
  pushHere?(socket: SocketRef, userId: string, envelopes: readonly StoredEnvelope[]): boolean | undefined;
  /**
   * Where a socket stands, asked by a new activation: `live` (its offline queue is drained: push),
   * `pending` (still opening or draining: it will announce itself), `gone` (its node answered that
   * it is not open there), `unreachable` (its node did not answer: not a member, the ask refused or
   * timed out; the socket may be open).
   */
  status(socket: SocketRef, userId: string): Promise<"live" | "pending" | "gone" | "unreachable">;
  /**
   * Tells one connection to read its device's offline queue again, then report `device.drained`
   * once more (envelopes went back to the queue after it had read it). False when the socket is
   * known to be gone; a remote node that no longer holds it reports a `device.disconnect`.
   */
  drainAgain(socket: SocketRef, userId: string): Promise<boolean>;
  /** Closes every socket of a user (erasure), wherever they are. */
  closeAll(userId: string, code: number, reason: string): Promise<void>;
  /** The user's open sockets, from the presence leases: what a new activation starts from. */
  open(userId: string): Promise<SocketRef[]>;
}

/**
 * What a group actor keeps of its members between sends, filled and checked by the directory:
 * the members and their devices as read at `version`, and per sender the members who block them.
 */
export interface GroupMembersCache {
  version?: number;
  members?: ReadonlyMap<string, readonly number[]>;
  blockers: Map<string, ReadonlySet<string>>;
}

/**
 * The sender's budget of stored ciphertext bytes (STORED_BYTES_PER_ACCOUNT_PER_DAY,
 * src/messaging/storage-quota.ts), as a group actor charges it: a group send is stored as one
 * row per recipient device, each holding the body until that device acks it, so it is charged the
 * body's bytes once per recipient device before anything is stored.
 */
export interface StoredBytesQuota {
  /** Bytes a base64 ciphertext body takes once stored (decoded). */
  bodyBytes(body: string): number;
  /**
   * Charges `bytes` to `userId`: allowed with what it counted (`charged`, all a refund may give
   * back; 0 when let through uncounted), or refused with the ms until the budget's window ends.
   * Never rejects.
   */
  charge(
    userId: string,
    bytes: number,
  ):
    | { allowed: true; charged: number }
    | { allowed: false; retryAfterMs: number }
    | Promise<{ allowed: true; charged: number } | { allowed: false; retryAfterMs: number }>;
  /** Gives back bytes a `charge` counted for copies that were then not stored. Never rejects. */
  refund(userId: string, bytes: number): Promise<void>;
}

/** Group membership and member devices as stored by the edges (PostgreSQL). */
export interface GroupDirectory {
  /**
   * Each member's device ids, or undefined when the group does not exist. With `sender`, a member
   * who blocks the sender is listed with no devices (still a member, sent nothing). With `cache`,
   * what it holds is reused while the group's membership is unchanged since it was read, and
   * refreshed otherwise; the answer is always that of a fresh read (the next send after a
   * committed change sees it), and is the very same map as the previous answer while nothing
   * changed (callers may key what they derive from it on its identity; never mutate it).
   */
  recipients(
    groupId: string,
    sender?: string,
    cache?: GroupMembersCache,
  ): Promise<ReadonlyMap<string, readonly number[]> | undefined>;
  /**
   * Optional: a count of member device changes heard of, read before `recipients` for a send, so
   * that `keepExisting` can tell afterwards whether a device it named may have gone since.
   */
  changeSeq?(): number;
  /**
   * Optional: after a send was stored for `devices` (user → device ids, as `recipients` answered
   * when `changeSeq` was `since`), erases from the log what it holds for a device removed since,
   * and returns the devices that still exist; the very same object when none of them changed. A
   * device removed between the members' read and the append would otherwise keep this send's
   * ciphertext (its removal erased the device's rows before the append committed).
   */
  keepExisting?(devices: Record<string, number[]>, since: number): Promise<Record<string, number[]>>;
}
