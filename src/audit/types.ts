import type { Tx } from "../db/index.ts";

/** Who did something: a user (pseudonymised when written), the admin RPC, or the server itself. */
export type AuditActor = { user: string } | "admin" | "system";

/** One thing worth recording: logins, key uploads, group changes, exports, erasures, admin calls. */
export interface AuditEvent {
  /** Dotted name, e.g. `session.login`, `keys.upload`, `group.member.invite`, `erasure.done`, `admin.call`. */
  action: string;
  actor: AuditActor;
  /** The user the entry is about (pseudonymised when written). */
  subject?: string;
  /** Facts without personal data: counts, group ids, routes, erasure ids. Never usernames, tokens, bodies. */
  details?: Record<string, unknown>;
}

/** A stored entry as the admin RPC and exports show it. */
export interface AuditEntry {
  seq: number;
  at: string;
  action: string;
  actor: string;
  subject: string | null;
  details: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

/**
 * The audit trail port the rest of the server writes to (implemented in src/audit/ on the
 * audit_log and audit_subject_keys tables).
 */
export interface AuditTrail {
  /** Appends one entry to the hash chain. */
  record(event: AuditEvent): Promise<void>;
  /** The user's pseudonym: HMAC-SHA256 of the id under the user's own key (created on first use). */
  pseudonym(userId: string): Promise<string>;
  /** Destroys the user's pseudonym key (erasure): their entries stay, and can no longer be linked to them. Returns keys removed. */
  forgetSubject(userId: string): Promise<number>;
  /** Entries whose subject or actor is this user's pseudonym; none once the key is destroyed. */
  entriesAbout(userId: string): Promise<AuditEntry[]>;
  /**
   * One page of `entriesAbout` in seq order: at most `limit` entries with `after` < seq <= `upTo`
   * (`upTo` omitted: no upper bound). Keyset paging: the next page is `after` = the last seq given.
   */
  entriesAboutPage(
    userId: string,
    page: { after: number; limit: number; upTo?: number },
  ): Promise<AuditEntry[]>;
  /** The seq of the newest entry of the chain (0 when it is empty). */
  lastSeq(): Promise<number>;
  /** Appends several entries in order in one transaction (optional: callers fall back to `record`). */
  recordAll?(events: AuditEvent[]): Promise<void>;
  /**
   * Appends the entries, in order, inside `tx`: a transaction on the trail's own database, which
   * records the change they are about. They commit with that change or roll back with it, so a node
   * dying between the two cannot leave a change without its entry. Called as the transaction's
   * last step: the chain's lock it takes is held until the commit. Throws what the write throws
   * (the caller's transaction then rolls back). Optional: callers without it record after the commit.
   */
  recordIn?(tx: Tx, events: AuditEvent[]): Promise<void>;
  /**
   * `forgetSubject` inside `tx` (a transaction on the trail's own database): the key goes, or stays,
   * with the rest of `tx`. Optional, as `recordIn`: callers without it forget after the commit.
   */
  forgetSubjectIn?(tx: Tx, userId: string): Promise<number>;
}
