import { Database, type Statement } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EnvelopeRef, GroupEnvelope } from "../../actors/index.ts";
import { stageTraceOn, stamp, traceEvent } from "../observability/stage-trace.ts";
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
import type { LogWorkerReply, LogWorkerRequest, LogWrite, WriteTrace } from "./sqlite-log-protocol.ts";

interface EnvelopeRow {
  seq: number;
  id: string;
  sender_user: string;
  sender_device: number;
  recipient_user: string;
  recipient_device: number;
  group_id: string | null;
  ts: number;
  type: number;
  body: Uint8Array | null;
  state: EnvelopeState | "acked";
}

function toEnvelope(r: EnvelopeRow): StoredEnvelope {
  return {
    id: r.id,
    senderUser: r.sender_user,
    senderDevice: r.sender_device,
    recipientUser: r.recipient_user,
    recipientDevice: r.recipient_device,
    groupId: r.group_id,
    ts: r.ts,
    type: r.type,
    // A view of the row's bytes, not a copy (Buffer.from of a Uint8Array copies it).
    body: r.body ? Buffer.from(r.body.buffer, r.body.byteOffset, r.body.byteLength).toString("base64") : "",
  };
}

function toMetadata(r: EnvelopeRow): EnvelopeMetadata {
  return {
    id: r.id,
    senderUser: r.sender_user,
    senderDevice: r.sender_device,
    recipientUser: r.recipient_user,
    recipientDevice: r.recipient_device,
    groupId: r.group_id,
    ts: r.ts,
    state: r.state,
  };
}

/** A page of `rows` read with `limit`: the cursor after the last one when the page is full. */
function pageOf<T>(rows: EnvelopeRow[], limit: number, map: (r: EnvelopeRow) => T): LogPage<T> {
  const last = rows.at(-1);
  return { rows: rows.map(map), next: rows.length >= limit && last ? last.seq : null };
}

/** Traces where a write's time went, the writer's parts and the reply's way back (stage trace on). */
function traceWrite(trace: WriteTrace): void {
  traceEvent("wqueue", trace.queue);
  traceEvent("wstatements", trace.statements);
  traceEvent("wcommit", trace.commit);
  traceEvent("wran", trace.ran);
  traceEvent("wwaited", trace.waited);
  traceEvent("wreply", performance.timeOrigin + performance.now() - trace.doneAt);
}

/** Only what names each envelope: callers may pass whole envelopes, whose ciphertext the worker need not copy. */
function plainRefs(refs: readonly EnvelopeRef[]): EnvelopeRef[] {
  return refs.map(({ id, senderUser, senderDevice }) => ({ id, senderUser, senderDevice }));
}

const COLUMNS =
  "seq, id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state";
/** What `metadataOf` reads: every column but the ciphertext. */
const METADATA_COLUMNS =
  "seq, id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, state";

/**
 * The embedded default's envelope log: SQLite (`bun:sqlite`) in WAL mode with `synchronous=FULL`,
 * so an appended envelope is fsynced before its sender hears `accepted`.
 *
 * Writes go to a writer thread (sqlite-log-worker.ts) through one group commit: appends, acks and
 * `queued` marks gathered while a transaction is in flight are committed together, one fsync for
 * all of them, and the fsync never blocks this event loop. Reads run here on a second connection
 * (WAL readers do not wait for the writer) and see every write whose promise has resolved.
 * Chosen over PGlite for the hot path because PGlite runs its WebAssembly on the server's event loop
 * (docs/BENCHMARKS.md, "Embedded engine").
 *
 * A group send is one `group_messages` row; the writer expands it into per-device rows in a later
 * transaction (queued right after the send), and first thing whenever an ack or a `queued` mark
 * is written. Reads that must see a device's rows ask for that expansion first while a group
 * message may be unexpanded.
 */
export class SqliteEnvelopeLog implements EnvelopeLog {
  readonly kind = "sqlite";
  readonly commitOperations = ["write"] as const;
  private readonly writes: GroupCommit<LogWrite, unknown>;
  private readonly pending = new Map<number, { resolve(r: unknown[]): void; reject(e: Error): void }>();
  private nextSeq = 0;
  private failure: Error | undefined;
  private closed = false;
  private reader!: Database;
  private readonly statements = new Map<string, Statement<EnvelopeRow>>();
  /** Group sends stored by this process (a count): an expansion that began after the last one covers them all. */
  private groupAppends = 0;
  /** Whether a group message may be unexpanded (true at open: a crash may have left some). */
  private unexpanded = true;

  private constructor(
    private readonly worker: Worker,
    readonly path: string,
    private readonly temporaryDir: string | undefined,
    onCommit?: CommitListener,
    private readonly expandInBackground = true,
  ) {
    this.writes = new GroupCommit(
      (ops) => {
        if (stageTraceOn)
          for (const op of ops) if (op.op === "append") for (const e of op.envelopes) stamp(e.id, "wstart");
        return this.request(
          stageTraceOn
            ? { kind: "write", seq: 0, ops, sentAt: performance.timeOrigin + performance.now() }
            : { kind: "write", seq: 0, ops },
        );
      },
      undefined,
      commitObserver(onCommit, "write"),
    );
    worker.onmessage = (event: MessageEvent<string>) => {
      const reply = JSON.parse(event.data) as LogWorkerReply;
      const waiter = this.pending.get(reply.seq);
      if (!waiter) return;
      this.pending.delete(reply.seq);
      if (reply.ok && reply.trace) traceWrite(reply.trace);
      if (reply.ok) waiter.resolve(reply.results);
      else waiter.reject(new Error(`envelope log: ${reply.error}`));
    };
    worker.onerror = (event) => {
      this.failure = new Error(`envelope log writer stopped: ${event.message}`);
      for (const waiter of this.pending.values()) waiter.reject(this.failure);
      this.pending.clear();
    };
  }

  /**
   * Opens (creating and migrating) the log at `path`, e.g. `DATA_DIR/envelopes.db`; `null` keeps
   * it in a temporary directory removed on close (tests). `expandInBackground: false` leaves group
   * messages unexpanded until an ack, a mark, a read or the sweep needs them (tests).
   */
  static async open(
    path: string | null,
    onCommit?: CommitListener,
    options: { expandInBackground?: boolean } = {},
  ): Promise<SqliteEnvelopeLog> {
    const temporaryDir = path === null ? mkdtempSync(join(tmpdir(), "clearbox-log-")) : undefined;
    const file = path ?? join(temporaryDir as string, "envelopes.db");
    const worker = new Worker(new URL("./sqlite-log-worker.ts", import.meta.url).href);
    const log = new SqliteEnvelopeLog(
      worker,
      file,
      temporaryDir,
      onCommit,
      options.expandInBackground ?? true,
    );
    try {
      await log.request({ kind: "open", seq: 0, path: file });
      log.reader = new Database(file, { strict: true });
      log.reader.run("pragma busy_timeout = 5000");
      log.reader.run("pragma query_only = true");
    } catch (error) {
      worker.terminate();
      if (temporaryDir) rmSync(temporaryDir, { recursive: true, force: true });
      throw error;
    }
    return log;
  }

  /**
   * Sends one request to the writer thread as JSON text (see sqlite-log-protocol.ts for why text)
   * and resolves with its results, or rejects with the writer's error.
   */
  private request(message: LogWorkerRequest): Promise<unknown[]> {
    if (this.failure) return Promise.reject(this.failure);
    const seq = ++this.nextSeq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.worker.postMessage(JSON.stringify({ ...message, seq }));
    });
  }

  /**
   * Writes a consistent copy of the log to `path` (a file that must not exist), taken by the writer
   * thread between two group commits with `VACUUM INTO`: every envelope committed before it, none
   * half-written. For backups of the embedded default (src/backup).
   */
  async backup(path: string): Promise<void> {
    await this.request({ kind: "backup", seq: 0, path });
  }

  private async writeOne<R>(op: LogWrite): Promise<R> {
    if (this.closed) throw new Error("envelope log is closed");
    const [result] = await this.writes.submit([op]);
    return result as R;
  }

  private statement(key: string, sql: string): Statement<EnvelopeRow> {
    if (this.closed) throw new Error("envelope log is closed");
    let statement = this.statements.get(key);
    if (!statement) {
      statement = this.reader.prepare<EnvelopeRow, never>(sql) as unknown as Statement<EnvelopeRow>;
      this.statements.set(key, statement);
    }
    return statement;
  }

  append(batch: StoredEnvelope[]): Promise<boolean[]> {
    if (batch.length === 0) return Promise.resolve([]);
    return this.writeOne<boolean[]>({ op: "append", envelopes: batch });
  }

  async appendGroup(message: GroupEnvelope, recipients: Record<string, number[]>): Promise<boolean> {
    this.groupAppends++;
    this.unexpanded = true;
    const fresh = await this.writeOne<boolean>({ op: "appendGroup", message, recipients });
    // Not awaited: the sender's `accepted` does not wait for it (a failure leaves it to the next need).
    if (fresh && this.expandInBackground) void this.expandAll().catch(() => {});
    return fresh;
  }

  /** Expands every unexpanded group message (in the writer's next transaction). */
  private async expandAll(): Promise<void> {
    const appends = this.groupAppends;
    await this.writeOne({ op: "expand" });
    if (this.groupAppends === appends) this.unexpanded = false;
  }

  async expandStale(olderThanMs: number): Promise<ExpandedGroupMessage[]> {
    if (!this.unexpanded) return [];
    return this.writeOne<ExpandedGroupMessage[]>({ op: "expand", olderThan: Date.now() - olderThanMs });
  }

  /** Before a read that must see every device's rows: a group message may still be one row. */
  private async expanded(): Promise<void> {
    if (this.unexpanded) await this.expandAll();
  }

  async undelivered(
    recipientUser: string,
    options: { device?: number; state?: EnvelopeState; limit?: number } = {},
  ): Promise<StoredEnvelope[]> {
    // `queued` rows exist only once expanded.
    if (options.state !== "queued") await this.expanded();
    const byDevice = options.device !== undefined;
    const byState = options.state !== undefined;
    // `state <> 'acked'` in every variant: SQLite uses the partial index only when the query repeats its condition.
    const statement = this.statement(
      `undelivered:${byDevice}:${byState}`,
      `select ${COLUMNS} from envelopes
       where recipient_user = ? ${byDevice ? "and recipient_device = ?" : ""}
         and state <> 'acked' ${byState ? "and state = ?" : ""}
       order by seq limit ?`,
    );
    const params: (string | number)[] = [recipientUser];
    if (byDevice) params.push(options.device as number);
    if (byState) params.push(options.state as string);
    params.push(options.limit ?? 10_000);
    return statement.all(...params).map(toEnvelope);
  }

  /** `queued` rows exist only once expanded, so no expansion first; the keys come from the recipient index. */
  async queuedAfter(
    recipientUser: string,
    recipientDevice: number,
    after: number | null,
    limit: number,
  ): Promise<QueuedRow[]> {
    // `state <> 'acked'` repeated for the partial index, as in `undelivered`.
    const rows = this.statement(
      "queued-after",
      `select ${COLUMNS} from envelopes
       where recipient_user = ? and recipient_device = ? and state <> 'acked' and state = 'queued' and seq > ?
       order by seq limit ?`,
    ).all(recipientUser, recipientDevice, after ?? -1, limit);
    return rows.map((r) => ({ cursor: r.seq, envelope: toEnvelope(r) }));
  }

  async queuedKeys(recipientUser: string, recipientDevice: number, through: number): Promise<QueuedKey[]> {
    const rows = this.statement(
      "queued-keys",
      `select seq, id, sender_user, sender_device from envelopes
       where recipient_user = ? and recipient_device = ? and state <> 'acked' and state = 'queued' and seq <= ?
       order by seq`,
    ).all(recipientUser, recipientDevice, through);
    return rows.map((r) => ({
      cursor: r.seq,
      id: r.id,
      senderUser: r.sender_user,
      senderDevice: r.sender_device,
    }));
  }

  markQueued(recipientUser: string, recipientDevice: number, refs: readonly EnvelopeRef[]): Promise<void> {
    if (refs.length === 0) return Promise.resolve();
    // Its result crosses from the writer as JSON `null`: resolve with nothing, as the port says.
    return this.writeOne<null>({
      op: "queued",
      recipientUser,
      recipientDevice,
      envelopes: plainRefs(refs),
    }).then(() => undefined);
  }

  ack(recipientUser: string, recipientDevice: number, refs: readonly EnvelopeRef[]): Promise<number> {
    if (refs.length === 0) return Promise.resolve(0);
    return this.writeOne<number>({ op: "ack", recipientUser, recipientDevice, envelopes: plainRefs(refs) });
  }

  async metadataOf(userId: string, limit = 100_000): Promise<EnvelopeMetadata[]> {
    await this.expanded();
    // No `body`: this read runs on the event loop, and up to `limit` ciphertexts (256 KiB each at
    // most) would be copied into it only to be dropped (an export of 1,500 queued 150 KB messages
    // read 225 MB here).
    const rows = this.statement(
      "metadata",
      `select ${METADATA_COLUMNS} from envelopes where sender_user = ? or recipient_user = ? order by seq limit ?`,
    ).all(userId, userId, limit);
    return rows.map(toMetadata);
  }

  /**
   * The page's keys first, from the indexes alone (the recipient index holds `seq`; every SQLite
   * index entry ends with the rowid, which `seq` is), then only those rows: sorting the user's
   * rows themselves to find the page would read every queued ciphertext of the user, up to
   * gigabytes, for each page.
   */
  async undeliveredPage(
    recipientUser: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<StoredEnvelope>> {
    if (after === null) await this.expanded();
    const rows = this.statement(
      "undelivered-page",
      `select ${COLUMNS} from envelopes where seq in (
         select seq from envelopes where recipient_user = ? and state <> 'acked' and seq > ? order by seq limit ?
       ) order by seq`,
    ).all(recipientUser, after ?? -1, limit);
    return pageOf(rows, limit, toEnvelope);
  }

  async metadataPage(
    userId: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<EnvelopeMetadata>> {
    if (after === null) await this.expanded();
    const rows = this.statement(
      "metadata-page",
      `select ${METADATA_COLUMNS} from envelopes where seq in (
         select seq from envelopes where sender_user = ? and seq > ?
         union
         select seq from envelopes where recipient_user = ? and seq > ?
         order by seq limit ?
       ) order by seq`,
    ).all(userId, after ?? -1, userId, after ?? -1, limit);
    return pageOf(rows, limit, toMetadata);
  }

  async queuedRecipientsOf(senderUser: string): Promise<{ userId: string; deviceId: number }[]> {
    const rows = this.statement(
      "queued-recipients",
      `select distinct recipient_user, recipient_device from envelopes
       where sender_user = ? and state = 'queued'`,
    ).all(senderUser);
    return rows
      .filter((r) => r.recipient_user !== senderUser)
      .map((r) => ({ userId: r.recipient_user, deviceId: r.recipient_device }));
  }

  eraseUser(userId: string): Promise<number> {
    return this.writeOne<number>({ op: "eraseUser", userId });
  }

  eraseDevice(userId: string, deviceId: number): Promise<number> {
    return this.writeOne<number>({ op: "eraseDevice", userId, deviceId });
  }

  purgeBefore(before: number): Promise<number> {
    return this.writeOne<number>({ op: "purgeBefore", before });
  }

  /** Items waiting for the next transaction (for metrics). */
  get backlog(): number {
    return this.writes.backlog;
  }

  /**
   * Closes the reader, lets the writer thread finish every write submitted before this call (the
   * one in flight and those gathered behind it for the next group commit) and stops it. Idempotent.
   * Afterwards (and while it waits) every request is rejected at once with "envelope log is
   * closed", and any still unanswered when the worker stops is rejected with it: none is left
   * pending for ever.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const statement of this.statements.values()) statement.finalize();
    this.statements.clear();
    // For real (its statements are finalized just above): the writer must be the last connection,
    // which checkpoints the WAL into the file and deletes it as it closes.
    this.reader?.close(true);
    // Writes gathered behind the one in flight are sent when it commits: posted after the worker's
    // close, they were refused ("not open"), though submitted before this call.
    await this.writes.settled();
    if (!this.failure) await this.request({ kind: "close", seq: 0 }).catch(() => undefined);
    const closed = new Error("envelope log is closed");
    this.failure ??= closed;
    this.worker.terminate();
    for (const waiter of this.pending.values()) waiter.reject(closed);
    this.pending.clear();
    if (this.temporaryDir) rmSync(this.temporaryDir, { recursive: true, force: true });
  }
}
