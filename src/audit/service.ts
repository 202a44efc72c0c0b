import { createHmac, randomBytes } from "node:crypto";
import { and, asc, desc, eq, gt, gte, inArray, lt, lte, max, or, type SQL, sql } from "drizzle-orm";
import type { Db, Tx } from "../db/index.ts";
import { auditLog, auditSubjectKeys } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { type ChainContent, chainHash, GENESIS_HASH } from "./chain.ts";
import type { AuditEntry, AuditEvent, AuditTrail } from "./types.ts";

/** pg_advisory_xact_lock key of the audit chain: every append and prune on every node takes it ("claudt", any constant shared by all nodes). */
export const CHAIN_LOCK = 0x636c_6175_6474;
const PAGE = 1000;
/** Rows per multi-row insert (7 parameters each, far below PostgreSQL's 65535). */
const INSERT_CHUNK = 500;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Detail keys that would carry credentials or content; callers must never send them. */
const FORBIDDEN_DETAILS = /^(password|token|accesstoken|refreshtoken|authorization|username|body|envelope)$/i;

/** `at` exactly as it was hashed: UTC ISO-8601 with milliseconds. */
const atIso = sql<string>`to_char(${auditLog.at} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

const entryColumns = {
  seq: auditLog.seq,
  at: atIso,
  action: auditLog.action,
  actor: auditLog.actor,
  subject: auditLog.subject,
  details: auditLog.details,
  prevHash: auditLog.prevHash,
  hash: auditLog.hash,
};

/**
 * An entry as kept outside the database to check the chain against later: its seq and hash, and
 * when it was written (`at`, UTC ISO-8601 as hashed), which tells a head that retention may have
 * removed from one it cannot have removed yet.
 */
export interface AuditHead {
  seq: number;
  hash: string;
  at?: string;
}

/**
 * How far the clocks of the node that pruned and the node that verifies may differ (ms) before a
 * kept head retention removed is taken for one it could not have removed.
 */
const RETENTION_CLOCK_SLACK_MS = 60 * 60_000;

/** What `verify()` found. */
export interface AuditVerification {
  ok: boolean;
  /** Entries whose link was checked (up to and including the broken one). */
  entries: number;
  /**
   * seq of the first entry whose prevHash or hash does not match, or of the `known` entry when it
   * is missing or holds another hash.
   */
  brokenAt?: number;
  /** When ok and the chain is not empty: its last entry, to keep outside the database. */
  head?: AuditHead;
}

/** What one retention pass removed from the head of the chain. */
export interface AuditPruneResult {
  removed: number;
  lastRemovedSeq?: number;
  lastRemovedHash?: string;
}

/** Filters of the admin listing. */
export interface AuditQuery {
  /** A user id; matched against the pseudonym of subject and actor. */
  subject?: string;
  since?: Date;
  /** Only entries with a greater seq (paging). */
  after?: number;
  /** Only entries with this seq or a smaller one. */
  upTo?: number;
  limit: number;
}

function assertUserId(userId: string): string {
  if (!UUID.test(userId)) throw new DomainError("invalid", "a user id must be a UUID");
  return userId.toLowerCase();
}

function pseudonymOf(key: Uint8Array, userId: string): string {
  return createHmac("sha256", key).update(userId).digest("hex").slice(0, 32);
}

/** Plain JSON only (what jsonb gives back), and never a credential or a body. */
function cleanDetails(details: Record<string, unknown> | undefined): Record<string, unknown> {
  const clean = JSON.parse(JSON.stringify(details ?? {})) as Record<string, unknown>;
  const walk = (value: unknown) => {
    if (value === null || typeof value !== "object") return;
    for (const [k, v] of Object.entries(value)) {
      if (FORBIDDEN_DETAILS.test(k)) throw new Error(`audit details must not carry "${k}"`);
      walk(v);
    }
  };
  walk(clean);
  return clean;
}

/**
 * The audit trail on PostgreSQL/PGlite: one hash chain in `audit_log`, appended under a
 * transaction-scoped advisory lock so nodes sharing the database never fork it; pseudonym keys in
 * `audit_subject_keys`, destroyed by erasure.
 */
export class PostgresAuditTrail implements AuditTrail {
  /**
   * `retentionDays`: AUDIT_RETENTION_DAYS, the age (whole days) below which retention never removes
   * an entry; verify takes a kept head younger than it, missing from the chain's start, for a
   * deleted one. Default 1, the least AUDIT_RETENTION_DAYS allows (never a false alarm).
   */
  constructor(
    private readonly db: Db,
    private readonly clock: () => Date = () => new Date(),
    private readonly options: { retentionDays?: number } = {},
  ) {}

  async record(event: AuditEvent): Promise<void> {
    await this.recordAll([event]);
  }

  /** Appends several entries in one transaction, in order (e.g. every member of a new group). */
  async recordAll(events: AuditEvent[]): Promise<void> {
    if (events.length === 0) return;
    const contents = await this.contents(this.db, events);
    await this.db.transaction((tx) => this.append(tx, contents));
  }

  /**
   * Appends the entries, in order, inside the caller's transaction `tx` (on this trail's database):
   * the pseudonym keys it creates and the entries commit or roll back with the change they record.
   * Call it last in `tx`: the chain's lock is held from here to the commit. Throws on details that
   * carry a credential or content, and what the write throws.
   */
  async recordIn(tx: Tx, events: AuditEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.append(tx, await this.contents(tx, events));
  }

  /** The entries' chained content: users replaced by their pseudonyms (read and created through `db`). */
  private async contents(db: Db, events: AuditEvent[]): Promise<Omit<ChainContent, "at">[]> {
    const users = events.flatMap((e) => [
      ...(typeof e.actor === "string" ? [] : [e.actor.user]),
      ...(e.subject === undefined ? [] : [e.subject]),
    ]);
    // Checked before anything is written: a forbidden key throws with nothing created.
    const details = events.map((e) => cleanDetails(e.details));
    const pseudonyms = await this.pseudonyms(users, db);
    return events.map((e, i) => ({
      action: e.action,
      actor: typeof e.actor === "string" ? e.actor : (pseudonyms.get(e.actor.user) as string),
      subject: e.subject === undefined ? null : (pseudonyms.get(e.subject) as string),
      details: details[i] as Record<string, unknown>,
    }));
  }

  async pseudonym(userId: string): Promise<string> {
    return (await this.pseudonyms([userId])).get(userId) as string;
  }

  /**
   * Pseudonyms keyed by the ids as given; keys are created on first use, through `db` (this trail's
   * database, or a transaction on it). Ids are taken in sorted order: two transactions creating
   * keys for the same users wait for each other's rows in one order, never in a cycle.
   */
  private async pseudonyms(userIds: string[], db: Db = this.db): Promise<Map<string, string>> {
    const ids = [...new Set(userIds.map(assertUserId))].sort();
    const keys = new Map<string, Uint8Array>();
    for (let i = 0; i < ids.length; i += INSERT_CHUNK) {
      const chunk = ids.slice(i, i + INSERT_CHUNK);
      await db
        .insert(auditSubjectKeys)
        .values(chunk.map((userId) => ({ userId, key: randomBytes(32) })))
        .onConflictDoNothing();
      const rows = await db
        .select({ userId: auditSubjectKeys.userId, key: auditSubjectKeys.key })
        .from(auditSubjectKeys)
        .where(inArray(auditSubjectKeys.userId, chunk));
      for (const row of rows) keys.set(row.userId, row.key);
    }
    // Erased between the insert and the read: try again, so the new pseudonym links to nothing old.
    const lost = ids.filter((id) => !keys.has(id));
    const retried = lost.length > 0 ? await this.pseudonyms(lost, db) : new Map<string, string>();
    return new Map(
      userIds.map((given) => {
        const id = given.toLowerCase();
        const key = keys.get(id);
        return [given, key ? pseudonymOf(key, id) : (retried.get(id) as string)];
      }),
    );
  }

  forgetSubject(userId: string): Promise<number> {
    return this.forgetSubjectIn(this.db, userId);
  }

  async forgetSubjectIn(tx: Db, userId: string): Promise<number> {
    const id = assertUserId(userId);
    const removed = await tx
      .delete(auditSubjectKeys)
      .where(eq(auditSubjectKeys.userId, id))
      .returning({ userId: auditSubjectKeys.userId });
    return removed.length;
  }

  async entriesAbout(userId: string): Promise<AuditEntry[]> {
    const entries: AuditEntry[] = [];
    for (let after = 0; ; ) {
      const page = await this.list({ subject: userId, after, limit: PAGE });
      entries.push(...page);
      if (page.length < PAGE) return entries;
      after = page[page.length - 1].seq;
    }
  }

  async entriesAboutPage(
    userId: string,
    page: { after: number; limit: number; upTo?: number },
  ): Promise<AuditEntry[]> {
    return this.list({ subject: userId, ...page });
  }

  async lastSeq(): Promise<number> {
    const [row] = await this.db.select({ seq: max(auditLog.seq) }).from(auditLog);
    return Number(row?.seq ?? 0);
  }

  /** Entries in seq order; a subject without a pseudonym key (never seen, or erased) has none. */
  async list(query: AuditQuery): Promise<AuditEntry[]> {
    const where: SQL[] = [];
    if (query.subject !== undefined) {
      const id = assertUserId(query.subject);
      const key = await this.keyOf(id);
      if (!key) return [];
      const pseudonym = pseudonymOf(key, id);
      where.push(or(eq(auditLog.subject, pseudonym), eq(auditLog.actor, pseudonym)) as SQL);
    }
    if (query.since) where.push(gte(auditLog.at, query.since.toISOString()));
    if (query.after !== undefined) where.push(gt(auditLog.seq, query.after));
    if (query.upTo !== undefined) where.push(lte(auditLog.seq, query.upTo));
    const rows = await this.db
      .select(entryColumns)
      .from(auditLog)
      .where(and(...where))
      .orderBy(asc(auditLog.seq))
      .limit(query.limit);
    return rows;
  }

  /**
   * Walks the chain in seq order, a page at a time, recomputing every hash. The first remaining
   * entry's prevHash is the anchor: the genesis hash, or the last hash removed by retention, which
   * an `audit.pruned` entry must name.
   *
   * The walk alone cannot see the last entries deleted, or the last one rewritten with its hash (no
   * later entry links to them). `known`, a `head` an earlier verification answered and kept outside
   * the database, closes that: the chain must still hold that entry with that hash (unless
   * retention removed it from the head), else it is broken at `known.seq`. Retention's own path
   * (the `clearbox.audit_prune` setting the append-only trigger lets through, and an `audit.pruned`
   * entry naming the anchor) is open to anyone who may delete, with any cut-off: with `known.at`,
   * a kept head younger than `retentionDays` that is gone from the chain's start is broken too.
   */
  async verify(known?: AuditHead): Promise<AuditVerification> {
    for (let attempt = 0; ; attempt++) {
      const result = await this.walk(known);
      // A prune that ran during the walk makes the next page look detached; walk again.
      if (result.ok || attempt >= 2 || !(await this.prunedPast(result.lastGood))) return result.verification;
    }
  }

  /**
   * Removes the entries older than `before` from the head of the chain (never a gap in the
   * middle), in the retention transaction the append-only trigger lets through, and appends an
   * `audit.pruned` entry naming the last removed hash: the new anchor.
   */
  async prune(before: Date): Promise<AuditPruneResult> {
    const cutoff = before.toISOString();
    return this.db.transaction(async (tx) => {
      await this.lock(tx);
      const [firstKept] = await tx
        .select({ seq: auditLog.seq })
        .from(auditLog)
        .where(gte(auditLog.at, cutoff))
        .orderBy(asc(auditLog.seq))
        .limit(1);
      const head = firstKept ? lt(auditLog.seq, firstKept.seq) : lt(auditLog.at, cutoff);
      const [last] = await tx
        .select({ seq: auditLog.seq, hash: auditLog.hash })
        .from(auditLog)
        .where(head)
        .orderBy(desc(auditLog.seq))
        .limit(1);
      if (!last) return { removed: 0 };
      await tx.execute(
        sql`select set_config('clearbox.audit_prune', 'on', true), set_config('clearbox.audit_prune_before', ${cutoff}, true)`,
      );
      const removed = await tx
        .delete(auditLog)
        .where(lte(auditLog.seq, last.seq))
        .returning({ seq: auditLog.seq });
      const result = { removed: removed.length, lastRemovedSeq: last.seq, lastRemovedHash: last.hash };
      // When everything was removed, the pruned hash itself is what the new entry links to.
      await this.append(
        tx,
        [{ action: "audit.pruned", actor: "system", subject: null, details: { ...result, before: cutoff } }],
        last.hash,
      );
      return result;
    });
  }

  private async keyOf(userId: string): Promise<Uint8Array | undefined> {
    const [row] = await this.db
      .select({ key: auditSubjectKeys.key })
      .from(auditSubjectKeys)
      .where(eq(auditSubjectKeys.userId, userId));
    return row?.key;
  }

  private async lock(tx: Db): Promise<void> {
    await tx.execute(sql`select pg_advisory_xact_lock(${sql.raw(String(CHAIN_LOCK))})`);
  }

  /** Appends under the chain lock; `at` never goes backwards, so retention always cuts a prefix. */
  private async append(tx: Db, contents: Omit<ChainContent, "at">[], anchor = GENESIS_HASH): Promise<void> {
    await this.lock(tx);
    const [last] = await tx
      .select({ hash: auditLog.hash, at: atIso })
      .from(auditLog)
      .orderBy(desc(auditLog.seq))
      .limit(1);
    const now = this.clock().toISOString();
    const at = last && last.at > now ? last.at : now;
    let prevHash = last?.hash ?? anchor;
    const rows = contents.map((content) => {
      const hash = chainHash(prevHash, { ...content, at });
      const row = { ...content, at, prevHash, hash };
      prevHash = hash;
      return row;
    });
    // One statement per chunk: identity values follow the VALUES order, so seq order is chain order.
    for (let i = 0; i < rows.length; i += INSERT_CHUNK) {
      await tx.insert(auditLog).values(rows.slice(i, i + INSERT_CHUNK));
    }
  }

  private async walk(
    known?: AuditHead,
  ): Promise<{ ok: boolean; lastGood: number; verification: AuditVerification }> {
    let checked = 0;
    let lastGood = 0;
    let expected: string | undefined;
    let knownFound = false;
    let lastAt = "";
    const broken = (seq: number) => ({
      ok: false,
      lastGood,
      verification: { ok: false, entries: checked, brokenAt: seq },
    });
    for (;;) {
      const page = await this.db
        .select(entryColumns)
        .from(auditLog)
        .where(gt(auditLog.seq, lastGood))
        .orderBy(asc(auditLog.seq))
        .limit(PAGE);
      for (const row of page) {
        checked++;
        if (expected === undefined) {
          expected = row.prevHash;
          if (expected !== GENESIS_HASH && !(await this.anchorExplained(expected))) return broken(row.seq);
          if (known && row.seq > known.seq) {
            // Before the head: removed by retention when a prune explains the anchor (it only ever
            // explains the successor of what it removed); a chain that starts over from the genesis
            // hash after it was deleted whole.
            if (expected === GENESIS_HASH) return broken(known.seq);
            // Retention removes only entries older than AUDIT_RETENTION_DAYS: a younger kept head
            // was deleted, through the prune path with a cut-off in the future or by hand.
            if (known.at !== undefined && Date.parse(known.at) >= this.oldestPrunable())
              return broken(known.seq);
            knownFound = true;
          }
        }
        if (row.prevHash !== expected || chainHash(row.prevHash, row) !== row.hash) return broken(row.seq);
        if (known && !knownFound && row.seq >= known.seq) {
          // Rewritten, hash and all; or deleted, and entries appended after the cut.
          if (row.seq > known.seq || row.hash !== known.hash) return broken(known.seq);
          knownFound = true;
        }
        expected = row.hash;
        lastGood = row.seq;
        lastAt = row.at;
      }
      if (page.length < PAGE) {
        // The chain ends before the kept entry: its tail was deleted.
        if (known && !knownFound) return broken(known.seq);
        const head = expected === undefined ? undefined : { seq: lastGood, hash: expected, at: lastAt };
        return {
          ok: true,
          lastGood,
          verification: { ok: true, entries: checked, ...(head ? { head } : {}) },
        };
      }
    }
  }

  /** The newest `at` (ms) retention can have removed by now, less the clock slack between nodes. */
  private oldestPrunable(): number {
    const days = this.options.retentionDays ?? 1;
    return this.clock().getTime() - days * 86_400_000 + RETENTION_CLOCK_SLACK_MS;
  }

  private async anchorExplained(anchor: string): Promise<boolean> {
    const [row] = await this.db
      .select({ seq: auditLog.seq })
      .from(auditLog)
      .where(
        and(eq(auditLog.action, "audit.pruned"), sql`${auditLog.details}->>'lastRemovedHash' = ${anchor}`),
      )
      .limit(1);
    return row !== undefined;
  }

  /** Whether retention removed the entry the walk last accepted (so a break may be a moving head). */
  private async prunedPast(lastGood: number): Promise<boolean> {
    if (lastGood === 0) return false;
    const [row] = await this.db
      .select({ seq: auditLog.seq })
      .from(auditLog)
      .where(eq(auditLog.seq, lastGood));
    return row === undefined;
  }
}
