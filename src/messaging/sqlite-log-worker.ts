/**
 * The embedded envelope log's writer thread (a Bun Worker started by SqliteEnvelopeLog): owns the
 * one write connection, applies the migrations, and commits each batch of writes in one
 * transaction. SQLite's commit with `synchronous=FULL` waits for fsync; doing it here keeps that
 * wait off the server's event loop, which meanwhile gathers the next batch (group commit).
 */
import { Database } from "bun:sqlite";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { drizzle } from "drizzle-orm/bun-sqlite";
import { migrate } from "drizzle-orm/bun-sqlite/migrator";
import type { ExpandedGroupMessage } from "./envelope-log.ts";
import type { LogWorkerReply, LogWorkerRequest, LogWrite, WriteTrace } from "./sqlite-log-protocol.ts";

interface GroupRow {
  seq: number;
  id: string;
  sender_user: string;
  sender_device: number;
  group_id: string;
  ts: number;
  type: number;
  body: Uint8Array;
  recipients: string;
}

declare const self: Worker;

const MIGRATIONS = resolve(import.meta.dir, "../../drizzle-sqlite");

let db: Database | undefined;
let write: ((ops: LogWrite[]) => unknown[]) | undefined;
/** The same write, timed by part for the stage trace (requests that carry `sentAt`). */
let tracedWrite: ((ops: LogWrite[], sentAt: number) => { results: unknown[]; trace: WriteTrace }) | undefined;

/** This thread's ms on a CPU and in a run queue since it started (Linux schedstat; zeros elsewhere). */
function threadSchedule(): [number, number] {
  try {
    const [run, wait] = readFileSync("/proc/thread-self/schedstat", "utf8").split(" ");
    return [Number(run) / 1e6, Number(wait) / 1e6];
  } catch {
    return [0, 0];
  }
}

const clock = () => performance.timeOrigin + performance.now();
/**
 * False once an expansion has left no group message unexpanded, until the next group send is
 * stored: the acks and `queued` marks, each of which expands first, then skip the query (one per
 * ack frame on the 1:1 path before). True at open (a crash may have left some) and after a failed
 * transaction (its expansion was rolled back).
 */
let mayBeUnexpanded = true;

/** Opens the file, sets durability and secure deletion, migrates, and prepares the statements. */
function open(path: string): void {
  mayBeUnexpanded = true;
  db = new Database(path, { create: true, strict: true });
  db.run("pragma journal_mode = wal");
  // FULL: a commit returns only after the WAL is fsynced, so `accepted` means on disk.
  db.run("pragma synchronous = full");
  // Acked ciphertext and erased rows are overwritten, not just unlinked (GDPR erasure).
  db.run("pragma secure_delete = on");
  db.run("pragma busy_timeout = 5000");
  migrate(drizzle({ client: db }), { migrationsFolder: MIGRATIONS });
  const insert = db.prepare(
    `insert into envelopes (id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state)
     values (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') on conflict do nothing`,
  );
  const ack = db.prepare(
    `update envelopes set state = 'acked', body = null
     where recipient_user = ? and recipient_device = ? and id = ? and sender_user = ? and sender_device = ?
       and body is not null`,
  );
  const queued = db.prepare(
    `update envelopes set state = 'queued'
     where recipient_user = ? and recipient_device = ? and id = ? and sender_user = ? and sender_device = ?
       and state = 'pending'`,
  );
  const eraseUser = db.prepare("delete from envelopes where sender_user = ? or recipient_user = ?");
  const eraseDevice = db.prepare("delete from envelopes where recipient_user = ? and recipient_device = ?");
  const purgeBefore = db.prepare("delete from envelopes where ts < ?");
  const insertGroup = db.prepare(
    `insert into group_messages (id, sender_user, sender_device, group_id, ts, type, body, recipients)
     values (?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing`,
  );
  const unexpanded = db.prepare<GroupRow, []>(
    `select seq, id, sender_user, sender_device, group_id, ts, type, body, recipients
     from group_messages where recipients is not null order by seq`,
  );
  const oldestUnexpanded = db.prepare<{ ts: number | null }, []>(
    "select min(ts) as ts from group_messages where recipients is not null",
  );
  const markExpanded = db.prepare("update group_messages set recipients = null, body = null where seq = ?");
  const setRecipients = db.prepare("update group_messages set recipients = ? where seq = ?");
  const eraseSent = db.prepare("delete from group_messages where sender_user = ?");
  const purgeGroups = db.prepare("delete from group_messages where ts < ?");
  /**
   * Writes the rows of every unexpanded group message, oldest first (this thread is the only
   * writer, so no other write comes between), leaving rows an ack or a `queued` mark wrote as they
   * are; returns what it wrote when asked to.
   */
  const expandAll = (report: boolean): ExpandedGroupMessage[] => {
    const written: ExpandedGroupMessage[] = [];
    if (!mayBeUnexpanded) return written;
    for (const row of unexpanded.all()) {
      const recipients = JSON.parse(row.recipients) as Record<string, number[]>;
      const devices: Record<string, number[]> = {};
      for (const [user, list] of Object.entries(recipients)) {
        for (const device of list) {
          const fresh =
            insert.run(
              row.id,
              row.sender_user,
              row.sender_device,
              user,
              device,
              row.group_id,
              row.ts,
              row.type,
              row.body,
            ).changes === 1;
          if (!fresh || !report) continue;
          const written = devices[user];
          if (written) written.push(device);
          else devices[user] = [device];
        }
      }
      markExpanded.run(row.seq);
      if (report && Object.keys(devices).length > 0) {
        written.push({
          envelope: {
            id: row.id,
            senderUser: row.sender_user,
            senderDevice: row.sender_device,
            groupId: row.group_id,
            ts: row.ts,
            type: row.type,
            body: Buffer.from(row.body).toString("base64"),
          },
          devices,
        });
      }
    }
    mayBeUnexpanded = false;
    return written;
  };
  /** Rewrites the recipients of unexpanded group messages that name `user` (erasure, device removal). */
  const rewriteRecipients = (user: string, change: (devices: number[]) => number[] | undefined): void => {
    for (const row of unexpanded.all()) {
      const recipients = JSON.parse(row.recipients) as Record<string, number[]>;
      const devices = recipients[user];
      if (!devices) continue;
      const next = change(devices);
      if (next === undefined) delete recipients[user];
      else recipients[user] = next;
      setRecipients.run(JSON.stringify(recipients), row.seq);
    }
  };
  const handle = (op: LogWrite): unknown => {
    switch (op.op) {
      case "appendGroup": {
        const m = op.message;
        const fresh =
          insertGroup.run(
            m.id,
            m.senderUser,
            m.senderDevice,
            m.groupId,
            m.ts,
            m.type,
            Buffer.from(m.body, "base64"),
            JSON.stringify(op.recipients),
          ).changes === 1;
        if (fresh) mayBeUnexpanded = true;
        return fresh;
      }
      case "expand": {
        if (op.olderThan === undefined) return expandAll(false).length;
        if (!mayBeUnexpanded) return [];
        const oldest = oldestUnexpanded.get()?.ts;
        if (oldest === null || oldest === undefined || oldest >= op.olderThan) return [];
        return expandAll(true);
      }
      case "append":
        return op.envelopes.map(
          (e) =>
            insert.run(
              e.id,
              e.senderUser,
              e.senderDevice,
              e.recipientUser,
              e.recipientDevice,
              e.groupId,
              e.ts,
              e.type,
              Buffer.from(e.body, "base64"),
            ).changes === 1,
        );
      case "ack": {
        // A group message not expanded yet has no row to ack: write its rows first.
        expandAll(false);
        let count = 0;
        for (const e of op.envelopes) {
          count += ack.run(op.recipientUser, op.recipientDevice, e.id, e.senderUser, e.senderDevice).changes;
        }
        return count;
      }
      case "queued":
        expandAll(false);
        for (const e of op.envelopes) {
          queued.run(op.recipientUser, op.recipientDevice, e.id, e.senderUser, e.senderDevice);
        }
        return undefined;
      case "eraseUser": {
        // Group messages first: none expanded after this names the user.
        const sent = eraseSent.run(op.userId).changes;
        rewriteRecipients(op.userId, () => undefined);
        return sent + eraseUser.run(op.userId, op.userId).changes;
      }
      case "eraseDevice":
        rewriteRecipients(op.userId, (devices) => devices.filter((d) => d !== op.deviceId));
        return eraseDevice.run(op.userId, op.deviceId).changes;
      case "purgeBefore":
        return purgeGroups.run(op.before).changes + purgeBefore.run(op.before).changes;
    }
  };
  const batch = db.transaction((ops: LogWrite[]) => ops.map(handle));
  /** Erasure: move the WAL's copies of the removed pages into the file and empty it (best effort:
   * a reader in the middle of a query lets the checkpoint finish only partly). */
  const afterWrite = (ops: LogWrite[]) => {
    if (ops.some((op) => op.op === "eraseUser" || op.op === "eraseDevice")) {
      db?.run("pragma wal_checkpoint(truncate)");
    }
  };
  write = (ops) => {
    let results: unknown[];
    try {
      results = batch(ops);
    } catch (error) {
      mayBeUnexpanded = true;
      throw error;
    }
    afterWrite(ops);
    return results;
  };
  const connection = db;
  tracedWrite = (ops, sentAt) => {
    const start = clock();
    const [ran0, waited0] = threadSchedule();
    let results: unknown[];
    let statementsDone: number;
    connection.run("begin");
    try {
      results = ops.map(handle);
      statementsDone = clock();
      connection.run("commit");
    } catch (error) {
      mayBeUnexpanded = true;
      if (connection.inTransaction) connection.run("rollback");
      throw error;
    }
    const doneAt = clock();
    const [ran1, waited1] = threadSchedule();
    afterWrite(ops);
    return {
      results,
      trace: {
        queue: start - sentAt,
        statements: statementsDone - start,
        commit: doneAt - statementsDone,
        ran: ran1 - ran0,
        waited: waited1 - waited0,
        doneAt,
      },
    };
  };
}

/**
 * Closes the connection for real: `close()` alone defers the close while a `prepare`d statement
 * lives (`sqlite3_close_v2`), so the last connection never closed, never checkpointed, and the
 * `-wal` file (with every row since the last checkpoint) stayed beside the database after shutdown.
 * `close(true)` finalizes every statement left (this file's, drizzle's migrator's, the
 * transaction's BEGIN/COMMIT) and throws when SQLite cannot close the file
 * (test/messaging/sqlite-envelope-log.test.ts checks the `-wal` is gone).
 */
function close(): void {
  write = undefined;
  tracedWrite = undefined;
  const connection = db;
  db = undefined;
  connection?.close(true);
}

self.onmessage = (event: MessageEvent<string>) => {
  let reply: LogWorkerReply;
  let seq = 0;
  try {
    const request = JSON.parse(event.data) as LogWorkerRequest;
    seq = request.seq;
    if (request.kind === "open") {
      open(request.path);
      reply = { seq: request.seq, ok: true, results: [] };
    } else if (request.kind === "backup") {
      if (!db) throw new Error("envelope log is not open");
      // One read transaction on the writer's own connection: no write can land half in the copy.
      // https://www.sqlite.org/lang_vacuum.html#vacuuminto
      db.run("vacuum into ?", [request.path]);
      reply = { seq: request.seq, ok: true, results: [] };
    } else if (request.kind === "close") {
      close();
      reply = { seq: request.seq, ok: true, results: [] };
    } else {
      if (!write || !tracedWrite) throw new Error("envelope log is not open");
      if (request.sentAt === undefined) reply = { seq: request.seq, ok: true, results: write(request.ops) };
      else reply = { seq: request.seq, ok: true, ...tracedWrite(request.ops, request.sentAt) };
    }
  } catch (error) {
    reply = { seq, ok: false, error: error instanceof Error ? error.message : String(error) };
  }
  self.postMessage(JSON.stringify(reply));
};
