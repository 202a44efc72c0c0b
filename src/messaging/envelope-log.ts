import type { EnvelopeLog as ActorEnvelopeLog, EnvelopeRef, GroupEnvelope } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";

/** Where an undelivered envelope is: waiting in the log for a live device, or copied to the device's offline queue. */
export type EnvelopeState = "pending" | "queued";

/** Metadata of an envelope, without its ciphertext or type (export, audits). */
export type EnvelopeMetadata = Omit<StoredEnvelope, "type" | "body"> & { state: EnvelopeState | "acked" };

/**
 * One page of a keyset-paginated read of the log: at most the `limit` asked for, in acceptance
 * order. `next` is the cursor to pass as `after` for the page that follows (the log's own order key,
 * e.g. its `seq`, of this page's last row: opaque to callers), or null when this page was the last.
 * A full page gives a cursor even when nothing follows it (the next page is then empty).
 */
export interface LogPage<T> {
  rows: T[];
  next: number | null;
}

/** A row of a device's offline queue (`queuedAfter`) with its cursor: the log's order key (its `seq`), opaque to callers. */
export interface QueuedRow {
  cursor: number;
  envelope: StoredEnvelope;
}

/** What names a row of a device's offline queue (`queuedKeys`), with its cursor, as in `QueuedRow`: no ciphertext. */
export type QueuedKey = EnvelopeRef & { cursor: number };

/** A group message an expansion wrote rows for, and the devices (userId → ids) it wrote them for. */
export interface ExpandedGroupMessage {
  envelope: GroupEnvelope;
  devices: Record<string, number[]>;
}

/**
 * The durable envelope log: every accepted envelope is here before its sender hears `accepted`
 * (a group send as one row, whose per-device rows an expansion writes after), and stays until the
 * recipient device acks it (then only metadata remains) or retention ends.
 * One conformance suite (test/messaging/envelope-log.conformance.ts) runs against every implementation.
 */
export interface EnvelopeLog extends ActorEnvelopeLog {
  readonly kind: string;
  /** A consistent copy of the log into a new file at `path`; only logs kept in a local file have it. */
  backup?(path: string): Promise<void>;
  /** The operations its group commits report to a `CommitListener` (metrics initialise these series). */
  readonly commitOperations?: readonly string[];
  /** Unacked envelopes of a user (one device or all), oldest first, in acceptance order. */
  undelivered(
    recipientUser: string,
    options?: { device?: number; state?: EnvelopeState; limit?: number },
  ): Promise<StoredEnvelope[]>;
  /**
   * Writes the per-device rows of the group messages (`appendGroup`) accepted at least
   * `olderThanMs` ago and not expanded yet (a node died between accepting and expanding them), with
   * every unexpanded one accepted before them; returns, per message, the devices whose row this
   * call wrote (their user actors may never have been told). Logs that write group messages' rows
   * at once (MongoDB) return nothing.
   */
  expandStale(olderThanMs: number): Promise<ExpandedGroupMessage[]>;
  /**
   * One device's offline queue (its `queued` envelopes) read by keyset, for `LogOfflineQueue`'s
   * drains: up to `limit` envelopes after the cursor `after` (null: from the oldest), oldest first,
   * each with its cursor. One bounded read whatever the queue's size: a drain reads each row once.
   */
  queuedAfter(
    recipientUser: string,
    recipientDevice: number,
    after: number | null,
    limit: number,
  ): Promise<QueuedRow[]>;
  /**
   * What names each `queued` envelope of one device at or before the cursor `through`, oldest
   * first, without ciphertext: where a drain looks for rows that became `queued` behind its cursor
   * (a `pending` row flushed to the queue late keeps its older place).
   */
  queuedKeys(recipientUser: string, recipientDevice: number, through: number): Promise<QueuedKey[]>;
  /** Metadata of envelopes sent by or to the user (export). */
  metadataOf(userId: string, limit?: number): Promise<EnvelopeMetadata[]>;
  /**
   * One page of `undelivered(recipientUser)` (every device, pending and queued): up to `limit`
   * envelopes accepted after the cursor `after` (null: from the oldest), oldest first. Keyset
   * pagination: each page is one bounded read whatever the queue's size, and pages that follow
   * each other list every envelope once (an envelope acked between two pages is in neither if
   * it was not yet read). For reads too large for one answer (export).
   */
  undeliveredPage(
    recipientUser: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<StoredEnvelope>>;
  /** One page of `metadataOf(userId)`, after the cursor `after` (null: from the oldest), as `undeliveredPage`. */
  metadataPage(userId: string, after: number | null, limit: number): Promise<LogPage<EnvelopeMetadata>>;
  /**
   * Other users' devices holding envelopes from `senderUser` in their offline queues (state
   * `queued`): where erasure must look besides the sender's own stores.
   */
  queuedRecipientsOf(senderUser: string): Promise<{ userId: string; deviceId: number }[]>;
  /** Removes every envelope sent by or to the user; returns how many (erasure). */
  eraseUser(userId: string): Promise<number>;
  /** Removes every envelope addressed to one device (device removal). */
  eraseDevice(userId: string, deviceId: number): Promise<number>;
  /** Removes envelopes accepted before `before` (retention); returns how many. */
  purgeBefore(before: number): Promise<number>;
  close(): Promise<void>;
}
