import { and, asc, eq, inArray, lt, or, sql } from "drizzle-orm";
import { type Db, rowsOf } from "../db/index.ts";
import { envelopes } from "../db/schema.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog, EnvelopeMetadata, EnvelopeState } from "./envelope-log.ts";
import { type CommitListener, commitObserver, GroupCommit } from "./group-commit.ts";

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** Identity of a stored envelope: sender device, message id and recipient device. */
function identity(e: {
  senderUser: string;
  senderDevice: number;
  id: string;
  recipientUser: string;
  recipientDevice: number;
}): string {
  return `${e.senderUser}/${e.senderDevice}/${e.id}/${e.recipientUser}/${e.recipientDevice}`;
}

/** Envelopes of one recipient device named by id (an ack, or a flush to the offline queue). */
interface AckRequest {
  recipientUser: string;
  recipientDevice: number;
  ids: string[];
}

/** Parallel arrays (one entry per id) for an UPDATE … FROM unnest(…). */
function flatten(batch: readonly AckRequest[]) {
  const users: string[] = [];
  const devices: number[] = [];
  const ids: string[] = [];
  for (const request of batch) {
    for (const id of request.ids) {
      if (!UUID.test(id)) throw new Error("envelope id is malformed");
      users.push(request.recipientUser);
      devices.push(request.recipientDevice);
      ids.push(id);
    }
  }
  return { users, devices, ids };
}

/**
 * A PostgreSQL array literal of values that need no quoting (UUIDs, integers, NULL, base64 in
 * double quotes): callers only pass values validated as such.
 */
function arrayLiteral(values: readonly (string | number)[]): string {
  return `{${values.join(",")}}`;
}

/** How long an ack or a `queued` mark is tried again while the database does not answer (ms). */
const IDEMPOTENT_RETRY_MS = 30_000;

/**
 * Runs an idempotent write (an ack, a `queued` mark: UPDATEs that only move a row forward) again,
 * 100 ms then up to 1 s apart, until it succeeds or IDEMPOTENT_RETRY_MS has passed, then throws
 * its last error. A database restart of a few seconds must not leave acked envelopes `pending`
 * (they would be delivered again on the next activation and never leave the log).
 */
async function retryWhileUnreachable<R>(write: () => Promise<R>): Promise<R> {
  const deadline = Date.now() + IDEMPOTENT_RETRY_MS;
  for (let wait = 100; ; wait = Math.min(wait * 2, 1000)) {
    try {
      return await write();
    } catch (error) {
      if (Date.now() + wait > deadline) throw error;
      await Bun.sleep(wait);
    }
  }
}

/** The envelope log in PostgreSQL or PGlite (drizzle), appending and acking with group commit. */
export class PostgresEnvelopeLog implements EnvelopeLog {
  readonly kind = "postgres";
  readonly commitOperations = ["append", "ack", "mark_queued"] as const;
  private readonly commit: GroupCommit<StoredEnvelope, boolean>;
  private readonly acks: GroupCommit<AckRequest, number>;
  private readonly queued: GroupCommit<AckRequest, undefined>;

  /** `onCommit` hears each group-committed write (metrics). */
  constructor(
    private readonly db: Db,
    onCommit?: CommitListener,
  ) {
    this.commit = new GroupCommit(
      (batch) => this.insert(batch),
      undefined,
      commitObserver(onCommit, "append"),
    );
    this.acks = new GroupCommit((batch) => this.ackBatch(batch), undefined, commitObserver(onCommit, "ack"));
    this.queued = new GroupCommit(
      (batch) => this.queuedBatch(batch),
      undefined,
      commitObserver(onCommit, "mark_queued"),
    );
  }

  append(batch: StoredEnvelope[]): Promise<boolean[]> {
    return this.commit.submit(batch);
  }

  /**
   * One INSERT … SELECT FROM unnest(arrays): ten parameters whatever the batch size, so a group
   * send to 10,000 member devices stays one statement (one row of values per parameter would pass
   * PostgreSQL's 65,535-parameter limit at about 6,500 rows) and parses once.
   */
  private async insert(batch: StoredEnvelope[]): Promise<boolean[]> {
    // The gateway validated these; checked again because they are spliced into array literals.
    for (const e of batch) {
      if (!BASE64.test(e.body) || !UUID.test(e.id)) throw new Error("envelope id or body is malformed");
    }
    const result = await this.db.execute(sql`
      insert into envelopes
        (id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state)
      select id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type,
        decode(body, 'base64'), 'pending'
      from unnest(
        ${arrayLiteral(batch.map((e) => e.id))}::uuid[],
        ${arrayLiteral(batch.map((e) => e.senderUser))}::uuid[],
        ${arrayLiteral(batch.map((e) => e.senderDevice))}::int[],
        ${arrayLiteral(batch.map((e) => e.recipientUser))}::uuid[],
        ${arrayLiteral(batch.map((e) => e.recipientDevice))}::int[],
        ${arrayLiteral(batch.map((e) => e.groupId ?? "NULL"))}::uuid[],
        ${arrayLiteral(batch.map((e) => e.ts))}::bigint[],
        ${arrayLiteral(batch.map((e) => e.type))}::smallint[],
        ${arrayLiteral(batch.map((e) => `"${e.body}"`))}::text[]
      ) as v(id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body)
      on conflict do nothing
      returning id, sender_user as "senderUser", sender_device as "senderDevice",
        recipient_user as "recipientUser", recipient_device as "recipientDevice"`);
    const inserted = rowsOf<{
      id: string;
      senderUser: string;
      senderDevice: number;
      recipientUser: string;
      recipientDevice: number;
    }>(result);
    const fresh = new Set(inserted.map(identity));
    // The same envelope twice in one batch: only its first occurrence is new.
    const seen = new Set<string>();
    return batch.map((e) => {
      const key = identity(e);
      const isNew = fresh.has(key) && !seen.has(key);
      seen.add(key);
      return isNew;
    });
  }

  async undelivered(
    recipientUser: string,
    options: { device?: number; state?: EnvelopeState; limit?: number } = {},
  ): Promise<StoredEnvelope[]> {
    const rows = await this.db
      .select()
      .from(envelopes)
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          options.device === undefined ? undefined : eq(envelopes.recipientDevice, options.device),
          options.state === undefined
            ? inArray(envelopes.state, ["pending", "queued"])
            : eq(envelopes.state, options.state),
        ),
      )
      .orderBy(asc(envelopes.seq))
      .limit(options.limit ?? 10_000);
    return rows.map((r) => ({
      id: r.id,
      senderUser: r.senderUser,
      senderDevice: r.senderDevice,
      recipientUser: r.recipientUser,
      recipientDevice: r.recipientDevice,
      groupId: r.groupId,
      ts: r.ts,
      type: r.type,
      body: r.body ? Buffer.from(r.body).toString("base64") : "",
    }));
  }

  async markQueued(recipientUser: string, recipientDevice: number, ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    await retryWhileUnreachable(() => this.queued.submit([{ recipientUser, recipientDevice, ids }]));
  }

  /**
   * Every device flushed to its offline queue meanwhile, in one UPDATE: when thousands of sockets
   * close at once (a node restart, a network blip), one statement per device would queue behind
   * the pool for longer than the disconnects may take.
   */
  private async queuedBatch(batch: AckRequest[]): Promise<undefined[]> {
    const { users, devices, ids } = flatten(batch);
    await this.db.execute(sql`
      update envelopes as e set state = 'queued'
      from unnest(${arrayLiteral(users)}::uuid[], ${arrayLiteral(devices)}::int[], ${arrayLiteral(ids)}::uuid[])
        as q(recipient_user, recipient_device, id)
      where e.recipient_user = q.recipient_user and e.recipient_device = q.recipient_device
        and e.id = q.id and e.state = 'pending'`);
    return batch.map(() => undefined);
  }

  async ack(recipientUser: string, recipientDevice: number, ids: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    const [acked] = await retryWhileUnreachable(() =>
      this.acks.submit([{ recipientUser, recipientDevice, ids }]),
    );
    return acked;
  }

  /** Every ack waiting for the database in one UPDATE: one commit instead of one per ack frame. */
  private async ackBatch(batch: AckRequest[]): Promise<number[]> {
    const { users, devices, ids } = flatten(batch);
    const result = await this.db.execute(sql`
      update envelopes as e set state = 'acked', body = null
      from unnest(${arrayLiteral(users)}::uuid[], ${arrayLiteral(devices)}::int[], ${arrayLiteral(ids)}::uuid[])
        as a(recipient_user, recipient_device, id)
      where e.recipient_user = a.recipient_user and e.recipient_device = a.recipient_device
        and e.id = a.id and e.body is not null
      returning e.recipient_user, e.recipient_device, e.id`);
    const rows = rowsOf<{ recipient_user: string; recipient_device: number; id: string }>(result);
    const acked = new Map<string, number>();
    for (const row of rows) {
      const key = `${row.recipient_user}/${row.recipient_device}`;
      acked.set(key, (acked.get(key) ?? 0) + 1);
    }
    // Two requests for one device in a batch share its count: give it to the first, once.
    return batch.map((request) => {
      const key = `${request.recipientUser}/${request.recipientDevice}`;
      const count = acked.get(key) ?? 0;
      acked.delete(key);
      return count;
    });
  }

  async metadataOf(userId: string, limit = 100_000): Promise<EnvelopeMetadata[]> {
    const rows = await this.db
      .select({
        id: envelopes.id,
        senderUser: envelopes.senderUser,
        senderDevice: envelopes.senderDevice,
        recipientUser: envelopes.recipientUser,
        recipientDevice: envelopes.recipientDevice,
        groupId: envelopes.groupId,
        ts: envelopes.ts,
        state: envelopes.state,
      })
      .from(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return rows;
  }

  async queuedRecipientsOf(senderUser: string): Promise<{ userId: string; deviceId: number }[]> {
    const rows = await this.db
      .selectDistinct({ userId: envelopes.recipientUser, deviceId: envelopes.recipientDevice })
      .from(envelopes)
      .where(and(eq(envelopes.senderUser, senderUser), eq(envelopes.state, "queued")));
    return rows.filter((row) => row.userId !== senderUser);
  }

  async eraseUser(userId: string): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .returning({ id: envelopes.id });
    return removed.length;
  }

  async eraseDevice(userId: string, deviceId: number): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(and(eq(envelopes.recipientUser, userId), eq(envelopes.recipientDevice, deviceId)))
      .returning({ id: envelopes.id });
    return removed.length;
  }

  /**
   * After a restore with empty RabbitMQ queues: every envelope the log says was copied to an
   * offline queue (`queued`) becomes `pending` again, so its recipient's user actor delivers it or
   * queues it anew on activation. Run with every node stopped (an active actor would not see it).
   * Returns how many envelopes were reset.
   */
  async requeueQueued(): Promise<number> {
    const reset = await this.db
      .update(envelopes)
      .set({ state: "pending" })
      .where(eq(envelopes.state, "queued"))
      .returning({ seq: envelopes.seq });
    return reset.length;
  }

  async purgeBefore(before: number): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(lt(envelopes.ts, before))
      .returning({ seq: envelopes.seq });
    return removed.length;
  }

  async close(): Promise<void> {}
}
