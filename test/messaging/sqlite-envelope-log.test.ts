import { Database } from "bun:sqlite";
import { afterAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDatabase } from "../../src/db/index.ts";
import { adoptPgliteLog } from "../../src/messaging/adopt-pglite-log.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";

// The behaviour every log shares is in envelope-log.conformance.ts; these are the embedded file's own.
describe("the embedded SQLite envelope log", () => {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-sqlite-log-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const envelope = (recipientUser: string) => ({
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser,
    recipientDevice: 1,
    groupId: null,
    ts: Date.now(),
    type: 1,
    body: Buffer.from("ciphertext").toString("base64"),
  });

  test("an append has committed when it resolves: another connection sees it, and it outlives a reopen", async () => {
    const path = join(dir, "durable.db");
    const recipient = randomUUID();
    const log = await SqliteEnvelopeLog.open(path);
    const first = envelope(recipient);
    expect(await log.append([first])).toEqual([true]);
    const other = new Database(path, { readonly: true });
    const seen = other.query("select id from envelopes where recipient_user = ?").all(recipient);
    other.close();
    expect(seen).toEqual([{ id: first.id }]);
    await log.close();

    const reopened = await SqliteEnvelopeLog.open(path);
    expect((await reopened.undelivered(recipient)).map((e) => e.id)).toEqual([first.id]);
    // The autoincrement sequence continues: a later append sorts after the earlier one.
    const second = envelope(recipient);
    await reopened.append([second]);
    expect((await reopened.undelivered(recipient)).map((e) => e.id)).toEqual([first.id, second.id]);
    await reopened.close();
  });

  test("close checkpoints the WAL and removes it: the file alone holds every row, and a reopen sees them", async () => {
    const path = join(dir, "checkpointed.db");
    const recipient = randomUUID();
    const log = await SqliteEnvelopeLog.open(path);
    const sent = [envelope(recipient), envelope(recipient), envelope(recipient)];
    await log.append(sent.slice(0, 2));
    await log.markQueued(recipient, 1, [sent[0] as StoredEnvelope]);
    await log.append(sent.slice(2));
    expect(await log.undelivered(recipient)).toHaveLength(3);
    await log.close();
    // Before, the writer's statements were never finalized: its close was deferred, so the last
    // connection never checkpointed and the -wal (with every row since the last checkpoint) stayed.
    expect(existsSync(`${path}-wal`) ? statSync(`${path}-wal`).size : 0).toBe(0);

    const reopened = await SqliteEnvelopeLog.open(path);
    const ids = async (state: "pending" | "queued") =>
      (await reopened.undelivered(recipient, { state })).map((e) => e.id);
    expect(await ids("queued")).toEqual([sent[0]?.id]);
    expect(await ids("pending")).toEqual([sent[1]?.id, sent[2]?.id]);
    await reopened.close();
  });

  test("appends, acks and queued marks submitted together all commit, each with its own result", async () => {
    const log = await SqliteEnvelopeLog.open(join(dir, "batched.db"));
    const recipient = randomUUID();
    const [a, b, c] = [envelope(recipient), envelope(recipient), envelope(recipient)];
    await log.append([a, b]);
    const [appended, acked, queued] = await Promise.all([
      log.append([c]),
      log.ack(recipient, 1, [a, { ...a, id: randomUUID() }]),
      log.markQueued(recipient, 1, [b]),
    ]);
    expect(appended).toEqual([true]);
    expect(acked).toBe(1);
    expect(queued).toBeUndefined();
    expect((await log.undelivered(recipient, { state: "queued" })).map((e) => e.id)).toEqual([b.id]);
    expect((await log.undelivered(recipient, { state: "pending" })).map((e) => e.id)).toEqual([c.id]);
    await log.close();
  });

  test("close commits the writes gathered behind the one in flight before it stops the writer", async () => {
    const log = await SqliteEnvelopeLog.open(join(dir, "gathered.db"));
    const recipient = randomUUID();
    const envelopes = Array.from({ length: 5 }, () => envelope(recipient));
    // The first goes to the writer at once; the other four wait for the next group commit, which
    // started after the writer had taken its close: they were refused, though submitted before it.
    const appending = envelopes.map((e) => log.append([e]));
    await log.close();
    expect(await Promise.all(appending)).toEqual(envelopes.map(() => [true]));
    const reopened = await SqliteEnvelopeLog.open(join(dir, "gathered.db"));
    expect((await reopened.undelivered(recipient)).map((e) => e.id).sort()).toEqual(
      envelopes.map((e) => e.id).sort(),
    );
    await reopened.close();
  });

  test("after close every request fails at once, saying the log is closed, and a second close is harmless", async () => {
    const log = await SqliteEnvelopeLog.open(join(dir, "closed.db"));
    const recipient = randomUUID();
    const first = envelope(recipient);
    // Submitted before close: committed, not dropped.
    const appending = log.append([first]);
    await log.close();
    expect(await appending).toEqual([true]);
    await expect(log.append([envelope(recipient)])).rejects.toThrow("envelope log is closed");
    await expect(log.ack(recipient, 1, [first])).rejects.toThrow("envelope log is closed");
    await expect(log.markQueued(recipient, 1, [first])).rejects.toThrow("envelope log is closed");
    await expect(log.undelivered(recipient)).rejects.toThrow("envelope log is closed");
    await log.close();
    const reopened = await SqliteEnvelopeLog.open(join(dir, "closed.db"));
    expect((await reopened.undelivered(recipient)).map((e) => e.id)).toEqual([first.id]);
    await reopened.close();
  });

  test("with the stage trace on, writes commit as without it and each write's parts are traced", async () => {
    const traceDir = mkdtempSync(join(tmpdir(), "clearbox-stage-trace-"));
    try {
      const script = `
        import { SqliteEnvelopeLog } from ${JSON.stringify(join(import.meta.dir, "../../src/messaging/sqlite-envelope-log.ts"))};
        const log = await SqliteEnvelopeLog.open(null);
        const e = (id) => ({ id, senderUser: "s", senderDevice: 1, recipientUser: "r", recipientDevice: 1, groupId: null, ts: Date.now(), type: 1, body: "AAAA" });
        const appended = await Promise.all([log.append([e("a")]), log.append([e("b")])]);
        const acked = await log.ack("r", 1, [{ id: "a", senderUser: "s", senderDevice: 1 }]);
        const left = (await log.undelivered("r")).map((x) => x.id);
        await log.close();
        console.log(JSON.stringify({ appended, acked, left }));
      `;
      const child = Bun.spawnSync([process.execPath, "-e", script], {
        env: { ...process.env, CB_STAGE_TRACE: traceDir },
      });
      expect(child.exitCode).toBe(0);
      expect(JSON.parse(child.stdout.toString().trim())).toEqual({
        appended: [[true], [true]],
        acked: 1,
        left: ["b"],
      });
      const trace = readdirSync(traceDir)
        .map((f) => readFileSync(join(traceDir, f), "utf8"))
        .join("");
      const kinds = new Set(trace.split("\n").map((line) => line.split(" ")[1]));
      for (const kind of ["wqueue", "wstatements", "wcommit", "wreply", "wran", "wwaited", "writems"])
        expect(kinds.has(kind)).toBe(true);
    } finally {
      rmSync(traceDir, { recursive: true, force: true });
    }
  });

  test("a file that is not a database fails to open, saying so", async () => {
    const path = join(dir, "not-a-database.db");
    await Bun.write(path, "this is not SQLite ".repeat(100));
    await expect(SqliteEnvelopeLog.open(path)).rejects.toThrow(
      /envelope log: .*(not a database|file is not)/,
    );
  });
});

describe("an embedded data directory from before the log moved to SQLite", () => {
  test("has its PGlite envelopes moved into the SQLite log with their states, in order, and removed from PGlite", async () => {
    const database = await openDatabase({ dataDir: null });
    const old = new PostgresEnvelopeLog(database.db);
    const log = await SqliteEnvelopeLog.open(null);
    try {
      const recipient = randomUUID();
      const rows = Array.from({ length: 7 }, (_, i) => ({
        id: randomUUID(),
        senderUser: randomUUID(),
        senderDevice: 1,
        recipientUser: recipient,
        recipientDevice: 1,
        groupId: null,
        ts: 1000 + i,
        type: 3,
        body: Buffer.from(`old ${i}`).toString("base64"),
      }));
      // Ids are the senders': rows 4 and 5 reuse the acked row 3's and the queued row 1's ids, from
      // other senders, and keep their own state (pending) through the move.
      Object.assign(rows[4] as StoredEnvelope, { id: rows[3]?.id });
      Object.assign(rows[5] as StoredEnvelope, { id: rows[1]?.id });
      await old.append(rows);
      await old.markQueued(recipient, 1, [rows[1] as StoredEnvelope, rows[2] as StoredEnvelope]);
      await old.ack(recipient, 1, [rows[3] as StoredEnvelope]);

      expect(await adoptPgliteLog(database.db, log)).toBe(7);
      const pending = await log.undelivered(recipient, { state: "pending" });
      const queued = await log.undelivered(recipient, { state: "queued" });
      expect(pending).toEqual([0, 4, 5, 6].map((i) => rows[i] as StoredEnvelope));
      expect(queued).toEqual([1, 2].map((i) => rows[i] as StoredEnvelope));
      const acked = (await log.metadataOf(recipient)).filter((m) => m.state === "acked");
      expect(acked.map((m) => `${m.senderUser}/${m.id}`)).toEqual([`${rows[3]?.senderUser}/${rows[3]?.id}`]);
      expect(await old.metadataOf(recipient)).toEqual([]);
      // Nothing left to move: a second start moves nothing.
      expect(await adoptPgliteLog(database.db, log)).toBe(0);
    } finally {
      await log.close();
      await database.close();
    }
  });
});
