import { and, asc, eq, gt, inArray, lt, lte, or, type SQL, sql } from "drizzle-orm";
import { type EnvelopeRef, envelopeKey, type GroupEnvelope } from "../../actors/index.ts";
import { type Db, executePrepared, rowsOf } from "../db/index.ts";
import { envelopes } from "../db/schema.ts";
import { stamp } from "../observability/stage-trace.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type {
  EnvelopeLog,
  EnvelopeMetadata,
  EnvelopeState,
  ExpandedGroupMessage,
  LogPage,
  QueuedKey,
  QueuedRow,
} from "./envelope-log.ts";
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
  return `${envelopeKey(e)}/${e.recipientUser}/${e.recipientDevice}`;
}

/** Envelopes of one recipient device named by id and sender device (an ack, or a flush to the offline queue). */
interface AckRequest {
  recipientUser: string;
  recipientDevice: number;
  envelopes: readonly EnvelopeRef[];
}

/** A row an ack's UPDATE changed: which device's envelope, from which sender device. */
interface AckedRow {
  recipient_user: string;
  recipient_device: number;
  id: string;
  sender_user: string;
  sender_device: number;
}

/** Parallel arrays (one entry per envelope) for an UPDATE … FROM unnest(…). */

/** What `flatten` returns. */
type FlatRefs = ReturnType<typeof flatten>;

function flatten(batch: readonly AckRequest[]) {
  const users: string[] = [];
  const devices: number[] = [];
  const ids: string[] = [];
  const senders: string[] = [];
  const senderDevices: number[] = [];
  for (const request of batch) {
    for (const e of request.envelopes) {
      if (!UUID.test(e.id) || !UUID.test(e.senderUser) || !Number.isInteger(e.senderDevice)) {
        throw new Error("envelope reference is malformed");
      }
      users.push(request.recipientUser);
      devices.push(request.recipientDevice);
      ids.push(e.id);
      senders.push(e.senderUser);
      senderDevices.push(e.senderDevice);
    }
  }
  return { users, devices, ids, senders, senderDevices };
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
function retryWhileUnreachable<R>(write: () => Promise<R>): Promise<R> {
  const deadline = Date.now() + IDEMPOTENT_RETRY_MS;
  // The first try is the write's own promise: a fan-out's 10,000 acks each went through an async
  // frame of this loop for a write that nearly always succeeds at once.
  return write().catch(async (first: unknown) => {
    if (Date.now() + 100 > deadline) throw first;
    await Bun.sleep(100);
    return retryFrom(write, deadline, 200);
  });
}

/** `retryWhileUnreachable` after its first failure: tries `write` again, `wait` ms apart at first. */
async function retryFrom<R>(write: () => Promise<R>, deadline: number, firstWait: number): Promise<R> {
  for (let wait = firstWait; ; wait = Math.min(wait * 2, 1000)) {
    try {
      return await write();
    } catch (error) {
      if (Date.now() + wait > deadline) throw error;
      await Bun.sleep(wait);
    }
  }
}

/** One group send as `appendGroup` takes it. */
interface GroupAppend {
  message: GroupEnvelope;
  recipients: Record<string, number[]>;
}

/** A row of an expansion that returns what it wrote (the sweep). */
interface ExpandedRow {
  seq: string | number;
  id: string;
  sender_user: string;
  sender_device: number;
  group_id: string;
  ts: string | number;
  type: number;
  body: Uint8Array;
  recipient_user: string;
  recipient_device: number;
}

/**
 * From this many envelopes (or acked refs) on, the append and the ack answer with their count
 * rather than a row per envelope. Measured on PostgreSQL 15 here (docs/BENCHMARKS.md "Services 1:1,
 * stop 31"): at 2 envelopes a write the counting CTE cost the backend about 150 µs more per
 * statement and saved the node nothing; at 100 it saved the node about 13 µs per envelope and
 * cost the backend nothing measurable.
 */
const COUNTED_FROM = 16;

/** The expansions one write may carry: a send to 10,000 devices is 10,000 rows. */
const EXPANSION_BATCH = 16;

/** Options of the PostgreSQL log. */
export interface PostgresLogOptions {
  /**
   * Expand each group message right after it is stored (default). False leaves that to acks,
   * `queued` marks, reads and the sweep, as a node that died right after `accepted` would (tests).
   */
  expandInBackground?: boolean;
}

/** What `metadataOf` and `metadataPage` read: every column but the ciphertext. */
const METADATA_COLUMNS = {
  id: envelopes.id,
  senderUser: envelopes.senderUser,
  senderDevice: envelopes.senderDevice,
  recipientUser: envelopes.recipientUser,
  recipientDevice: envelopes.recipientDevice,
  groupId: envelopes.groupId,
  ts: envelopes.ts,
  state: envelopes.state,
};

/** An `envelopes` row as the log hands it out (`undelivered`, `undeliveredPage`, the PGlite log's adoption): the body base64. */
export function toStoredEnvelope(r: typeof envelopes.$inferSelect): StoredEnvelope {
  return {
    id: r.id,
    senderUser: r.senderUser,
    senderDevice: r.senderDevice,
    recipientUser: r.recipientUser,
    recipientDevice: r.recipientDevice,
    groupId: r.groupId,
    ts: r.ts,
    type: r.type,
    body: r.body ? Buffer.from(r.body).toString("base64") : "",
  };
}

/**
 * The envelope log in PostgreSQL or PGlite (drizzle), appending and acking with group commit.
 *
 * A group send is one `group_messages` row (`appendGroup`); its per-device `envelopes` rows are
 * written by an expansion, which also clears the row's body and recipients, in one statement.
 * Every expansion locks the unexpanded rows it takes (`FOR UPDATE`, oldest first, waiting for
 * another expansion that holds them) and takes every unexpanded row older than its target too,
 * so the rows of one group keep the group's order whichever node expands them. Expansions run in
 * the background after each send, and first thing in every write or read that must see a
 * device's rows: an ack or `queued` mark naming a group message, `undelivered`, `metadataOf`.
 * Erasure and retention delete or rewrite `group_messages` rows before they delete envelopes:
 * an expansion holding a row makes them wait until its rows are committed, which they then see.
 */
export class PostgresEnvelopeLog implements EnvelopeLog {
  readonly kind = "postgres";
  readonly commitOperations = ["append", "append_group", "expand", "ack", "mark_queued"] as const;
  private readonly commit: GroupCommit<StoredEnvelope, boolean>;
  private readonly groups: GroupCommit<GroupAppend, number | null>;
  private readonly expansions: GroupCommit<number, undefined>;
  private readonly acks: GroupCommit<AckRequest, number>;
  private readonly queued: GroupCommit<AckRequest, undefined>;
  private readonly expandInBackground: boolean;

  /** `onCommit` hears each group-committed write (metrics). */
  constructor(
    private readonly db: Db,
    onCommit?: CommitListener,
    options: PostgresLogOptions = {},
  ) {
    this.expandInBackground = options.expandInBackground ?? true;
    this.groups = new GroupCommit(
      (batch) => this.insertGroups(batch),
      undefined,
      commitObserver(onCommit, "append_group"),
    );
    this.expansions = new GroupCommit(
      async (seqs) => {
        await this.expand(sql`seq <= ${Math.max(...seqs)}`);
        return seqs.map(() => undefined);
      },
      EXPANSION_BATCH,
      commitObserver(onCommit, "expand"),
    );
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
   * A write of COUNTED_FROM envelopes or more answers with one row when every envelope was new (the
   * count of rows written), and names the rows written only when some were not (a re-sent id, the
   * same envelope twice in the batch): a row per envelope came back, was decoded and keyed in the
   * node for every write, though nearly every write stores all it carries. A smaller write keeps
   * the plain `returning`: the counting CTE costs PostgreSQL more per statement than a few rows
   * cost the node (docs/BENCHMARKS.md "Services 1:1, stop 31").
   */
  private async insert(batch: StoredEnvelope[]): Promise<boolean[]> {
    // The gateway validated these; checked again because they are spliced into array literals.
    for (const e of batch) {
      if (!BASE64.test(e.body) || !UUID.test(e.id)) throw new Error("envelope id or body is malformed");
      stamp(e.id, "wstart");
    }
    const insert = sql`
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
      on conflict do nothing`;
    const counted = batch.length >= COUNTED_FROM;
    const result = counted
      ? await executePrepared(
          this.db,
          "envelopes_append_counted",
          sql`
      with written as (${insert}
        returning id, sender_user, sender_device, recipient_user, recipient_device
      ), total as (select count(*)::int as n from written)
      select total.n, w.id, w.sender_user as "senderUser", w.sender_device as "senderDevice",
        w.recipient_user as "recipientUser", w.recipient_device as "recipientDevice"
      from total left join written as w on total.n < ${batch.length}::int`,
        )
      : await executePrepared(
          this.db,
          "envelopes_append",
          sql`${insert}
      returning id, sender_user as "senderUser", sender_device as "senderDevice",
        recipient_user as "recipientUser", recipient_device as "recipientDevice"`,
        );
    const rows = rowsOf<{
      n?: number;
      id: string | null;
      senderUser: string;
      senderDevice: number;
      recipientUser: string;
      recipientDevice: number;
    }>(result);
    // As many rows written as envelopes given: all distinct, all new.
    if (counted && Number(rows[0]?.n) === batch.length) return batch.map(() => true);
    const fresh = new Set(rows.flatMap((r) => (r.id === null ? [] : [identity({ ...r, id: r.id })])));
    // The same envelope twice in one batch: only its first occurrence is new.
    const seen = new Set<string>();
    return batch.map((e) => {
      const key = identity(e);
      const isNew = fresh.has(key) && !seen.has(key);
      seen.add(key);
      return isNew;
    });
  }

  async appendGroup(message: GroupEnvelope, recipients: Record<string, number[]>): Promise<boolean> {
    const [seq] = await this.groups.submit([{ message, recipients }]);
    if (seq === null || seq === undefined) return false;
    // Not awaited: the sender's `accepted` does not wait for it. Should it fail, the next ack, read
    // or sweep that needs the rows writes them.
    if (this.expandInBackground) void this.expansions.submit([seq]).catch(() => {});
    return true;
  }

  /** Every group send waiting for the database in one INSERT; per send, its new row's seq or null (a re-send). */
  private async insertGroups(batch: GroupAppend[]): Promise<(number | null)[]> {
    const rows = batch.map(({ message: m, recipients }) => {
      if (!BASE64.test(m.body) || !UUID.test(m.id)) throw new Error("envelope id or body is malformed");
      return sql`(${m.id}::uuid, ${m.senderUser}::uuid, ${m.senderDevice}::int, ${m.groupId}::uuid,
        ${m.ts}::bigint, ${m.type}::smallint, decode(${m.body}, 'base64'), ${JSON.stringify(recipients)}::jsonb)`;
    });
    const result = await this.db.execute(sql`
      insert into group_messages (id, sender_user, sender_device, group_id, ts, type, body, recipients)
      values ${sql.join(rows, sql`, `)}
      on conflict do nothing
      returning seq, id, sender_user as "senderUser", sender_device as "senderDevice"`);
    const inserted = new Map<string, number>();
    for (const r of rowsOf<{ seq: string | number; id: string; senderUser: string; senderDevice: number }>(
      result,
    )) {
      inserted.set(envelopeKey(r), Number(r.seq));
    }
    // The same send twice in one batch: only its first occurrence is new.
    return batch.map(({ message: m }) => {
      const key = envelopeKey(m);
      const seq = inserted.get(key);
      inserted.delete(key);
      return seq ?? null;
    });
  }

  /**
   * Expands every unexpanded group message matching `through` (a condition on `group_messages`)
   * and every unexpanded one older than the newest of them, in one statement: locks them oldest
   * first (waiting for an expansion that holds one; a row it expanded meanwhile is skipped),
   * inserts one `pending` row per recipient device (`ON CONFLICT DO NOTHING`: a row already there
   * keeps its state), and clears their body and recipients, in one transaction. With `report`,
   * returns the rows written (the sweep tells their actors).
   */
  private async expand(through?: SQL, report = false): Promise<ExpandedRow[]> {
    const bound = through
      ? sql`and seq <= (select max(seq) from group_messages where recipients is not null and (${through}))`
      : sql``;
    // Nothing to expand, the usual case for acks and reads: one index probe, and no write.
    const [waiting] = rowsOf<{ any: boolean }>(
      await this.db.execute(
        sql`select exists (select 1 from group_messages where recipients is not null ${through ? sql`and (${through})` : sql``}) as any`,
      ),
    );
    if (!waiting?.any) return [];
    // The planner guesses 100 rows per jsonb_each, so millions for a few messages, and would JIT-
    // compile the statement: about a second on a busy machine for what takes milliseconds.
    const result = await this.db.transaction(async (tx) => {
      await tx.execute(sql`set local jit = off`);
      return tx.execute(sql`
      with claimed as materialized (
        select seq, id, sender_user, sender_device, group_id, ts, type, body, recipients
        from group_messages
        where recipients is not null ${bound}
        order by seq
        for update
      ),
      marked as (
        update group_messages as g set recipients = null, body = null
        from claimed as c
        where g.sender_user = c.sender_user and g.sender_device = c.sender_device and g.id = c.id
      ),
      inserted as (
        insert into envelopes
          (id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state)
        select c.id, c.sender_user, c.sender_device, r.key::uuid, d.value::int, c.group_id, c.ts, c.type,
          c.body, 'pending'
        from claimed as c
          cross join lateral jsonb_each(c.recipients) as r
          cross join lateral jsonb_array_elements_text(r.value) as d
        order by c.seq
        on conflict do nothing
        returning sender_user, sender_device, id, recipient_user, recipient_device
      )
      ${
        report
          ? sql`select c.seq, c.id, c.sender_user, c.sender_device, c.group_id, c.ts, c.type, c.body,
              i.recipient_user, i.recipient_device
            from inserted as i join claimed as c
              on c.sender_user = i.sender_user and c.sender_device = i.sender_device and c.id = i.id
            order by c.seq`
          : sql`select count(*)::int as n from inserted`
      }`);
    });
    return report ? rowsOf<ExpandedRow>(result) : [];
  }

  async expandStale(olderThanMs: number): Promise<ExpandedGroupMessage[]> {
    const rows = await this.expand(sql`ts < ${Date.now() - olderThanMs}`, true);
    const messages = new Map<string, ExpandedGroupMessage>();
    for (const r of rows) {
      const key = String(r.seq);
      let message = messages.get(key);
      if (!message) {
        message = {
          envelope: {
            id: r.id,
            senderUser: r.sender_user,
            senderDevice: r.sender_device,
            groupId: r.group_id,
            ts: Number(r.ts),
            type: r.type,
            body: Buffer.from(r.body).toString("base64"),
          },
          devices: {},
        };
        messages.set(key, message);
      }
      const list = message.devices[r.recipient_user];
      if (list) list.push(r.recipient_device);
      else message.devices[r.recipient_user] = [r.recipient_device];
    }
    return [...messages.values()];
  }

  async undelivered(
    recipientUser: string,
    options: { device?: number; state?: EnvelopeState; limit?: number } = {},
  ): Promise<StoredEnvelope[]> {
    // `queued` rows exist only once expanded; `pending` ones may still be in `group_messages`.
    if (options.state !== "queued") await this.expand();
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
    return rows.map(toStoredEnvelope);
  }

  /** `queued` rows exist only once expanded: no expansion first. */
  async queuedAfter(
    recipientUser: string,
    recipientDevice: number,
    after: number | null,
    limit: number,
  ): Promise<QueuedRow[]> {
    const rows = await this.db
      .select()
      .from(envelopes)
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          eq(envelopes.recipientDevice, recipientDevice),
          eq(envelopes.state, "queued"),
          after === null ? undefined : gt(envelopes.seq, after),
        ),
      )
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return rows.map((r) => ({ cursor: Number(r.seq), envelope: toStoredEnvelope(r) }));
  }

  async queuedKeys(recipientUser: string, recipientDevice: number, through: number): Promise<QueuedKey[]> {
    const rows = await this.db
      .select({
        seq: envelopes.seq,
        id: envelopes.id,
        senderUser: envelopes.senderUser,
        senderDevice: envelopes.senderDevice,
      })
      .from(envelopes)
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          eq(envelopes.recipientDevice, recipientDevice),
          eq(envelopes.state, "queued"),
          lte(envelopes.seq, through),
        ),
      )
      .orderBy(asc(envelopes.seq));
    return rows.map(({ seq, ...ref }) => ({ ...ref, cursor: Number(seq) }));
  }

  async markQueued(
    recipientUser: string,
    recipientDevice: number,
    refs: readonly EnvelopeRef[],
  ): Promise<void> {
    if (refs.length === 0) return;
    await retryWhileUnreachable(() =>
      this.queued.submit([{ recipientUser, recipientDevice, envelopes: refs }]),
    );
  }

  /**
   * Every device flushed to its offline queue meanwhile, in one UPDATE: when thousands of sockets
   * close at once (a node restart, a network blip), one statement per device would queue behind
   * the pool for longer than the disconnects may take.
   */
  private async queuedBatch(batch: AckRequest[]): Promise<undefined[]> {
    const { users, devices, ids, senders, senderDevices } = flatten(batch);
    // A group message not expanded yet has no rows to mark: write them first (committed before the UPDATE reads).
    await this.expand(sql`id = any(${arrayLiteral(ids)}::uuid[])`);
    await executePrepared(
      this.db,
      "envelopes_mark_queued",
      sql`
      update envelopes as e set state = 'queued'
      from unnest(${arrayLiteral(users)}::uuid[], ${arrayLiteral(devices)}::int[], ${arrayLiteral(ids)}::uuid[],
          ${arrayLiteral(senders)}::uuid[], ${arrayLiteral(senderDevices)}::int[])
        as q(recipient_user, recipient_device, id, sender_user, sender_device)
      where e.recipient_user = q.recipient_user and e.recipient_device = q.recipient_device
        and e.id = q.id and e.sender_user = q.sender_user and e.sender_device = q.sender_device
        and e.state = 'pending'`,
    );
    return batch.map(() => undefined);
  }

  async ack(recipientUser: string, recipientDevice: number, refs: readonly EnvelopeRef[]): Promise<number> {
    if (refs.length === 0) return 0;
    const [acked] = await retryWhileUnreachable(() =>
      this.acks.submit([{ recipientUser, recipientDevice, envelopes: refs }]),
    );
    return acked;
  }

  /**
   * Every ack waiting for the database in one UPDATE: one commit instead of one per ack frame. Rows
   * are acked first; only when some id matched no row (a group message's ack that overtook its
   * expansion, or an id acked before) is the expansion run and those ids acked again, so a 1:1 ack
   * is one statement, not an expansion probe and an UPDATE.
   */
  private async ackBatch(batch: AckRequest[]): Promise<number[]> {
    const acked = new Map<string, number>();
    const matched = new Set<string>();
    const count = (rows: AckedRow[]) => {
      for (const row of rows) {
        const device = `${row.recipient_user}/${row.recipient_device}`;
        acked.set(device, (acked.get(device) ?? 0) + 1);
        matched.add(
          identity({
            senderUser: row.sender_user,
            senderDevice: row.sender_device,
            id: row.id,
            recipientUser: row.recipient_user,
            recipientDevice: row.recipient_device,
          }),
        );
      }
    };
    const all = flatten(batch);
    const first = await this.ackRows(all);
    if (first === "all") {
      // Every ref matched a row of its own (the key is the primary key): each request acked all it named.
      for (const request of batch) {
        const device = `${request.recipientUser}/${request.recipientDevice}`;
        acked.set(device, (acked.get(device) ?? 0) + request.envelopes.length);
      }
    } else count(first);
    if (first !== "all" && matched.size < all.ids.length) {
      // PostgreSQL returns uuids in lower case; a client may have sent them in upper.
      const rest = flatten(
        batch.map((request) => {
          const { recipientUser, recipientDevice } = request;
          const unmatched = (e: EnvelopeRef) =>
            !matched.has(identity({ ...e, recipientUser, recipientDevice }).toLowerCase());
          return { ...request, envelopes: request.envelopes.filter(unmatched) };
        }),
      );
      if (rest.ids.length > 0) {
        // As for `queued` marks: an ack overtaking the expansion writes the rows first, then acks its own.
        await this.expand(sql`id = any(${arrayLiteral(rest.ids)}::uuid[])`);
        const again = await this.ackRows(rest);
        if (again === "all") {
          for (let i = 0; i < rest.ids.length; i++) {
            const device = `${rest.users[i]}/${rest.devices[i]}`;
            acked.set(device, (acked.get(device) ?? 0) + 1);
          }
        } else count(again);
      }
    }
    // Two requests for one device in a batch share its count: give it to the first, once.
    return batch.map((request) => {
      const key = `${request.recipientUser}/${request.recipientDevice}`;
      const n = acked.get(key) ?? 0;
      acked.delete(key);
      return n;
    });
  }

  /**
   * Acks the named rows (recipient device, sender device and id) still holding a body. Returns the
   * rows it changed, or, for COUNTED_FROM refs or more, "all" when every ref changed a row (one row
   * comes back, the count; the rows only otherwise): see `insert` for why small writes differ.
   */
  private async ackRows({
    users,
    devices,
    ids,
    senders,
    senderDevices,
  }: FlatRefs): Promise<AckedRow[] | "all"> {
    const update = sql`
      update envelopes as e set state = 'acked', body = null
      from unnest(${arrayLiteral(users)}::uuid[], ${arrayLiteral(devices)}::int[], ${arrayLiteral(ids)}::uuid[],
          ${arrayLiteral(senders)}::uuid[], ${arrayLiteral(senderDevices)}::int[])
        as a(recipient_user, recipient_device, id, sender_user, sender_device)
      where e.recipient_user = a.recipient_user and e.recipient_device = a.recipient_device
        and e.id = a.id and e.sender_user = a.sender_user and e.sender_device = a.sender_device
        and e.body is not null
      returning e.recipient_user, e.recipient_device, e.id, e.sender_user, e.sender_device`;
    if (ids.length < COUNTED_FROM)
      return rowsOf<AckedRow>(await executePrepared(this.db, "envelopes_ack", update));
    const result = await executePrepared(
      this.db,
      "envelopes_ack_counted",
      sql`
      with changed as (${update}), total as (select count(*)::int as n from changed)
      select total.n, c.recipient_user, c.recipient_device, c.id, c.sender_user, c.sender_device
      from total left join changed as c on total.n < ${ids.length}::int`,
    );
    const rows = rowsOf<AckedRow & { n: number }>(result);
    if (Number(rows[0]?.n) === ids.length) return "all";
    return rows.filter((row) => row.id !== null);
  }

  async metadataOf(userId: string, limit = 100_000): Promise<EnvelopeMetadata[]> {
    await this.expand();
    const rows = await this.db
      .select(METADATA_COLUMNS)
      .from(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return rows;
  }

  /**
   * Sorting the user's rows to find the page leaves their ciphertexts where they are (out of line,
   * TOAST): only the page's are read.
   */
  async undeliveredPage(
    recipientUser: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<StoredEnvelope>> {
    if (after === null) await this.expand();
    const rows = await this.db
      .select()
      .from(envelopes)
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          inArray(envelopes.state, ["pending", "queued"]),
          after === null ? undefined : gt(envelopes.seq, after),
        ),
      )
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return {
      rows: rows.map(toStoredEnvelope),
      next: rows.length >= limit ? (rows.at(-1)?.seq ?? null) : null,
    };
  }

  async metadataPage(
    userId: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<EnvelopeMetadata>> {
    if (after === null) await this.expand();
    const rows = await this.db
      .select({ seq: envelopes.seq, ...METADATA_COLUMNS })
      .from(envelopes)
      .where(
        and(
          or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)),
          after === null ? undefined : gt(envelopes.seq, after),
        ),
      )
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return {
      rows: rows.map(({ seq: _seq, ...metadata }) => metadata),
      next: rows.length >= limit ? (rows.at(-1)?.seq ?? null) : null,
    };
  }

  async queuedRecipientsOf(senderUser: string): Promise<{ userId: string; deviceId: number }[]> {
    const rows = await this.db
      .selectDistinct({ userId: envelopes.recipientUser, deviceId: envelopes.recipientDevice })
      .from(envelopes)
      .where(and(eq(envelopes.senderUser, senderUser), eq(envelopes.state, "queued")));
    return rows.filter((row) => row.userId !== senderUser);
  }

  /**
   * Group messages first, each statement after the last: one an expansion holds is waited for, and
   * the envelopes it wrote are then deleted with the rest; none expanded later names the user.
   */
  async eraseUser(userId: string): Promise<number> {
    const sent = await this.db.execute(sql`
      delete from group_messages where sender_user = ${userId}::uuid returning seq`);
    await this.db.execute(sql`
      update group_messages set recipients = recipients - ${userId}::text
      where recipients is not null and jsonb_exists(recipients, ${userId}::text)`);
    const removed = await this.db
      .delete(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .returning({ id: envelopes.id });
    return removed.length + rowsOf(sent).length;
  }

  /** The device leaves the recipients of unexpanded group messages first (see eraseUser), then its rows go. */
  async eraseDevice(userId: string, deviceId: number): Promise<number> {
    await this.db.execute(sql`
      update group_messages
      set recipients = jsonb_set(recipients, array[${userId}::text], coalesce(
        (select jsonb_agg(d) from jsonb_array_elements(recipients -> ${userId}::text) as d
         where d <> to_jsonb(${deviceId}::int)),
        '[]'::jsonb))
      where recipients is not null and jsonb_exists(recipients, ${userId}::text)`);
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

  /** Group messages first (see eraseUser), then envelopes; returns the rows removed from both. */
  async purgeBefore(before: number): Promise<number> {
    const groups = await this.db.execute(sql`
      delete from group_messages where ts < ${before}::bigint returning seq`);
    const removed = await this.db
      .delete(envelopes)
      .where(lt(envelopes.ts, before))
      .returning({ seq: envelopes.seq });
    return removed.length + rowsOf(groups).length;
  }

  async close(): Promise<void> {}
}
