import { afterEach, beforeEach, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { PostgresAuditTrail } from "../../src/audit/service.ts";
import { loadConfig } from "../../src/config/index.ts";
import { type Database, openDatabase } from "../../src/db/index.ts";
import { accounts } from "../../src/db/schema.ts";
import { ExportService, exportResponse, OTHER_USER, SELF_EXPORT_LIMIT } from "../../src/gdpr/export.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import type { EnvelopeLog } from "../../src/messaging/envelope-log.ts";
import { MemoryPresence } from "../../src/messaging/memory-presence.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { MemoryRateLimiter } from "../../src/ratelimit/index.ts";

/** Rows per page in these tests: small, so a few dozen envelopes make many pages. */
const PAGE_ROWS = { metadata: 4, queued: 3, audit: 3 };

/** One read of the log the export made: which method, on which turn of the event loop, how many rows. */
interface Read {
  method: string;
  turn: number;
  rows: number;
}

let database: Database;
let log: SqliteEnvelopeLog;
let userId: string;
let reads: Read[];
/** Turns of the event loop so far (a setImmediate loop counts them). */
let turn = 0;
let counting = true;

/**
 * The real embedded log, every call recorded: a read's method, the event-loop turn it ran on, and
 * how many rows it answered. `afterQueuedPage` runs after each `undeliveredPage` answer.
 */
function recorded(real: EnvelopeLog, afterQueuedPage?: () => Promise<void>): EnvelopeLog {
  return new Proxy(real, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return async (...args: unknown[]) => {
        const result = await value.apply(target, args);
        const rows = Array.isArray(result) ? result.length : (result as { rows?: unknown[] })?.rows?.length;
        reads.push({ method: String(property), turn, rows: rows ?? 0 });
        if (property === "undeliveredPage") await afterQueuedPage?.();
        return result;
      };
    },
  });
}

function envelope(overrides: Partial<StoredEnvelope>): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser: randomUUID(),
    recipientDevice: 1,
    groupId: null,
    ts: Date.now(),
    type: 3,
    body: Buffer.from(`ciphertext ${randomUUID()}`).toString("base64"),
    ...overrides,
  };
}

function service(
  exportLog: EnvelopeLog,
  extra: Partial<ConstructorParameters<typeof ExportService>[0]> = {},
) {
  return new ExportService({
    db: database.db,
    log: exportLog,
    presence: new MemoryPresence(),
    audit: new PostgresAuditTrail(database.db),
    config: loadConfig({ JWT_SECRET: "x".repeat(32) }),
    pageRows: PAGE_ROWS,
    ...extra,
  });
}

beforeEach(async () => {
  database = await openDatabase({ dataDir: null });
  log = await SqliteEnvelopeLog.open(null);
  reads = [];
  counting = true;
  const tick = () => {
    turn++;
    if (counting) setImmediate(tick);
  };
  tick();
  const [account] = await database.db
    .insert(accounts)
    .values({ username: `stream_${randomUUID().slice(0, 8)}` })
    .returning({ id: accounts.id });
  userId = (account as { id: string }).id;
  // 20 envelopes waiting for two devices of the user (2 of them then acked), 5 the user sent and
  // 3 nobody here is party to: 7 pages of queued ciphertexts and 7 of metadata.
  const friend = randomUUID();
  const received = Array.from({ length: 20 }, (_, i) =>
    envelope({ senderUser: friend, recipientUser: userId, recipientDevice: 1 + (i % 2) }),
  );
  await log.append(received.slice(0, 10));
  await log.append(Array.from({ length: 3 }, () => envelope({})));
  await log.append(Array.from({ length: 5 }, () => envelope({ senderUser: userId, recipientUser: friend })));
  await log.append(received.slice(10));
  await log.ack(userId, 1, [received[0] as StoredEnvelope]);
  await log.ack(userId, 2, [received[13] as StoredEnvelope]);
});

afterEach(async () => {
  counting = false;
  await log.close().catch(() => {});
  await database.close();
});

test("an export streams the archive from pages of the log, one event-loop turn apart, and never reads a list whole", async () => {
  const archive = await service(recorded(log)).export(userId, "admin");
  const text = await new Response(archive).text();

  // The document, byte for byte as JSON.stringify writes it, with the log's lists complete and in order.
  const document = JSON.parse(text);
  expect(JSON.stringify(document)).toBe(text);
  expect(document.format).toBe("clearbox-export/1");
  expect(document.messages.metadata).toEqual(await log.metadataOf(userId));
  expect(document.messages.metadata).toHaveLength(25);
  expect(document.messages.queued).toEqual(await log.undelivered(userId));
  expect(document.messages.queued).toHaveLength(18);
  expect(Object.keys(document)).toEqual([
    "format",
    "generatedAt",
    "account",
    "identityProviderLinks",
    "devices",
    "publicKeys",
    "groups",
    "invitations",
    "blocks",
    "messages",
    "presence",
    "audit",
    "processing",
  ]);
  expect(Object.keys(document.messages)).toEqual(["note", "metadata", "queued"]);

  // Pages only, none longer than asked: 25 metadata rows in pages of 4, 18 ciphertexts in pages of 3.
  expect(reads.map((r) => r.method)).toEqual([
    ...Array(7).fill("metadataPage"),
    ...Array(7).fill("undeliveredPage"),
  ]);
  expect(reads.map((r) => r.rows)).toEqual([4, 4, 4, 4, 4, 4, 1, 3, 3, 3, 3, 3, 3, 0]);
  // Other work gets the event loop between two pages (the embedded log reads synchronously).
  for (let i = 1; i < reads.length; i++)
    expect((reads[i] as Read).turn).toBeGreaterThan((reads[i - 1] as Read).turn);
});

test("the audit entries about the user are read in keyset pages too, never whole, up to the export's own entry", async () => {
  const trail = new PostgresAuditTrail(database.db);
  const [friend] = await database.db
    .insert(accounts)
    .values({ username: `friend_${randomUUID().slice(0, 8)}` })
    .returning({ id: accounts.id });
  for (let i = 0; i < 7; i++) {
    await trail.record({ action: "session.login", actor: { user: userId }, subject: userId, details: { i } });
  }
  await trail.record({
    action: "group.member.invite",
    actor: { user: (friend as { id: string }).id },
    subject: userId,
  });
  const calls: { method: string; rows: number }[] = [];
  const watched = new Proxy(trail, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return async (...args: unknown[]) => {
        const result = await value.apply(target, args);
        calls.push({ method: String(property), rows: Array.isArray(result) ? result.length : 0 });
        return result;
      };
    },
  });
  const document = JSON.parse(
    await new Response(await service(log, { audit: watched }).export(userId, "admin")).text(),
  );

  // Every entry about the user until the export, in order; the export's own entry came after.
  const all = await trail.entriesAbout(userId);
  expect(all.at(-1)?.action).toBe("export");
  expect(document.audit.map((e: { seq: number }) => e.seq)).toEqual(all.slice(0, -1).map((e) => e.seq));
  expect(document.audit).toHaveLength(8);
  expect(document.audit.at(-1).actor).toBe(OTHER_USER);
  expect(document.audit[0].actor).toBe(await trail.pseudonym(userId));
  // Pages of at most 3, never the whole list at once.
  expect(calls.map((c) => c.method)).not.toContain("entriesAbout");
  expect(calls.filter((c) => c.method === "entriesAboutPage").map((c) => c.rows)).toEqual([3, 3, 2]);
});

test("a failure mid-stream aborts the HTTP response: the download fails, what came does not parse, the export stays audited and the self budget's hit is given back", async () => {
  const lines: string[] = [];
  const logger = createLogger({
    level: "debug",
    nodeId: "test",
    destination: new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  });
  const rateLimiter = new MemoryRateLimiter();
  // The log is lost (closed) after the export's first page of queued ciphertexts.
  const exports = service(
    recorded(log, () => log.close()),
    { rateLimiter, logger },
  );
  for (let i = 0; i < SELF_EXPORT_LIMIT.limit - 1; i++) await rateLimiter.hit(SELF_EXPORT_LIMIT, userId);
  const server = Bun.serve({
    port: 0,
    fetch: async () => exportResponse(await exports.export(userId, "self")),
  });
  try {
    const response = await fetch(`http://127.0.0.1:${server.port}/`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toStartWith("application/json");
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    let received = "";
    const decoder = new TextDecoder();
    const failure = await (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
        received += decoder.decode(value, { stream: true });
      }
    })().catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(Error);
    // Everything up to the first queued page came; the rest did not, and no `]}…}` closes it.
    expect(received).toContain('"queued":[');
    expect(() => JSON.parse(received)).toThrow();
    expect(reads.filter((r) => r.method === "undeliveredPage")).toHaveLength(1);
  } finally {
    server.stop(true);
  }
  expect((await rateLimiter.peek(SELF_EXPORT_LIMIT, userId)).allowed).toBe(true);
  const audited = await new PostgresAuditTrail(database.db).entriesAbout(userId);
  expect(audited.filter((e) => e.action === "export")).toHaveLength(1);
  const warning = lines.find((line) => line.includes("export failed mid-stream"));
  expect(warning).toBeDefined();
  expect(lines.join("")).not.toContain(userId);
});

test("a client that stops reading ends the reads and keeps its hit spent", async () => {
  const rateLimiter = new MemoryRateLimiter();
  const archive = await service(recorded(log), { rateLimiter }).export(userId, "self");
  const reader = archive.getReader();
  await reader.read();
  await reader.cancel();
  const readsAtCancel = reads.length;
  await new Promise((resolve) => setTimeout(resolve, 20));
  expect(reads.length).toBe(readsAtCancel);
  expect(reads.length).toBeLessThan(14);
  // Cancelling is the client's choice, not a failure: the hit stays spent.
  for (let i = 0; i < SELF_EXPORT_LIMIT.limit - 2; i++) await rateLimiter.hit(SELF_EXPORT_LIMIT, userId);
  expect((await rateLimiter.peek(SELF_EXPORT_LIMIT, userId)).allowed).toBe(true);
  await rateLimiter.hit(SELF_EXPORT_LIMIT, userId);
  expect((await rateLimiter.peek(SELF_EXPORT_LIMIT, userId)).allowed).toBe(false);
});
