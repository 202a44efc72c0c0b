import { asc, count, eq } from "drizzle-orm";
import type { AuditEntry, AuditTrail } from "../audit/types.ts";
import type { Config } from "../config/index.ts";
import type { Db } from "../db/index.ts";
import {
  accounts,
  blocks,
  devices,
  groupInvitations,
  groupMembers,
  groups,
  handedOutPreKeys,
  identityKeys,
  kyberLastResortKeys,
  oidcIdentities,
  oneTimeKyberPreKeys,
  oneTimePreKeys,
  signedPreKeys,
} from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { EnvelopeLog, LogPage } from "../messaging/envelope-log.ts";
import type { Presence } from "../messaging/presence.ts";
import type { Logger } from "../observability/logger.ts";
import { type RateLimiter, type RateLimitRule, spendOrRefuse } from "../ratelimit/index.ts";

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

/** The Art. 15 information that goes with every export: why, how long, who else sees it. */
export function processingInformation(config: Config) {
  return {
    controller:
      "the organisation operating this ClearBox server (see its record of processing, GET /admin/v1/ropa)",
    purposes: [
      "delivering your end-to-end-encrypted messages to the devices of the people you write to (contract, Art. 6(1)(b))",
      "keeping your account, devices and public keys so others can start encrypted sessions with you",
      "showing your online status and last-seen time to people who share a group with you (both of you accepted, neither blocks the other)",
      "security and accountability: a pseudonymised, tamper-evident audit log (Art. 6(1)(c) and (f))",
    ],
    retention: {
      undeliveredMessagesDays: config.retentionDays,
      messageMetadataDays: config.retentionDays,
      accountAndKeys: "until you delete your account (DELETE /v1/me) or a device",
      presence: "while connected, then the last-seen time until erasure",
      auditLog: "pseudonymised entries; unlinkable from you once your account is erased",
    },
    recipients:
      "none: the server shares nothing with third parties; message contents are end-to-end encrypted and unreadable to the server",
    source: config.oidc
      ? `you and your devices; and the identity provider ${config.oidc.issuer}, when you sign in with it (your subject identifier and the username claim, ${config.oidc.usernameClaim})`
      : "you and your devices",
    automatedDecisionMaking: "none",
    rights:
      "access and portability (this export), erasure (DELETE /v1/me), rectification, restriction and objection (contact the operator), complaint to a supervisory authority",
  };
}

/**
 * Exports an account may ask for itself (`GET /v1/me/export`) per hour. An export reads everything
 * the account holds, its queued ciphertexts included (up to 10,000 of up to 256 KiB each), and
 * built the archive whole on the node's event loop: one of 1,500 queued 150 KB messages took
 * 1.6-2.7 CPU-seconds and held `/healthz` for seconds (docs/BENCHMARKS.md, "Exports"; streamed
 * since, it still reads and sends every byte), and nothing stopped a client from asking again at
 * once, or many times in parallel. A person asks for their data a
 * few times at most; repeated requests are "excessive" under GDPR Art. 12(5). The admin twin is
 * not limited.
 */
export const SELF_EXPORT_LIMIT = {
  name: "export",
  limit: 5,
  windowMs: 60 * 60_000,
} satisfies RateLimitRule;

/**
 * Rows of the envelope log an export reads per page: a page is what an export holds in memory
 * (besides the account's other rows, which are bounded), whatever the archive's size. Queued
 * ciphertexts are up to 256 KiB each (342 KiB in base64), so 16 of them are at most about 5.5 MB
 * of JSON; a metadata row is about 300 bytes of it.
 */
export const EXPORT_PAGE_ROWS = { metadata: 1_000, queued: 16, audit: 1_000 } as const;

/** The export's JSON around its three long lists, and the first page of the log's and the audit's. */
interface ArchiveFrame {
  /** From `{"format":…` to `"messages":{"note":…,"metadata":[`. */
  head: string;
  /** From the end of `queued` to the start of `audit`: `]},"presence":…,"audit":[`. */
  middle: string;
  /** From the end of `audit` to the document's end: `],"processing":…}`. */
  tail: string;
  firstMetadata: LogPage<unknown>;
  firstAudit: LogPage<unknown>;
  /** The audit entries listed are those up to this seq: the chain's newest before the export's own. */
  auditUpTo: number;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * `separator` and the rows' JSON (as `JSON.stringify` writes each), comma-separated, as UTF-8 in
 * one buffer. A row whose last key is a base64 `body` (a queued ciphertext: no character JSON
 * escapes) has it copied in as it is: stringifying the row, joining the page and encoding the
 * result copied every ciphertext three more times, garbage the collector reclaims late.
 */
function encodeRows(rows: readonly unknown[], separator: string): Buffer {
  const parts: string[] = [];
  let before = separator;
  for (const row of rows) {
    const { body, ...rest } = row as { body?: unknown };
    const keys = Object.keys(rest);
    if (
      typeof body === "string" &&
      keys.length > 0 &&
      Object.keys(row as object).at(-1) === "body" &&
      BASE64.test(body)
    ) {
      parts.push(`${before}${JSON.stringify(rest).slice(0, -1)},"body":"`, body, '"}');
    } else parts.push(before + JSON.stringify(row));
    before = ",";
  }
  let length = 0;
  for (const part of parts) length += Buffer.byteLength(part);
  const bytes = Buffer.allocUnsafe(length);
  let offset = 0;
  for (const part of parts) offset += bytes.write(part, offset);
  return bytes;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Builds the machine-readable archive of everything held about one user (GDPR Art. 15 and 20)
 * and streams it: the envelope log is read in pages as the client takes the bytes, so a node
 * holds about one page of it (`EXPORT_PAGE_ROWS`) whatever the archive's size.
 */
export class ExportService {
  constructor(
    private readonly deps: {
      db: Db;
      log: EnvelopeLog;
      presence: Presence;
      audit: AuditTrail;
      config: Config;
      /** Counts the exports a user asks for themself (`SELF_EXPORT_LIMIT`); none: not limited. */
      rateLimiter?: RateLimiter;
      /** Hears of an export that failed mid-stream (never the user, only the error's class). */
      logger?: Pick<Logger, "warn">;
      /** Rows per page of the log and the audit (tests make them small); `EXPORT_PAGE_ROWS` by default. */
      pageRows?: { metadata: number; queued: number; audit: number };
    },
  ) {}

  /**
   * The archive of `userId` (docs/GDPR.md) as UTF-8 JSON bytes, read as they are pulled:
   * `JSON.parse` of the whole stream is the `clearbox-export/1` document. `requestedBy: "self"`
   * spends one of the account's `SELF_EXPORT_LIMIT` first: `rate_limited` (with
   * `retryAfterSeconds`) past it, before anything is read or audited. Everything but the envelope
   * log's two lists and the audit entries, and the first page of the first and the last, is read
   * (and the export audited) before this resolves: `not_found` when the account does not exist, and a store that cannot be read throws
   * here. A failure after that (the log lost mid-way) errors the stream, so the document is cut off
   * and never valid JSON (the HTTP response is aborted). Both kinds of failure give the budget's
   * hit back, since the person got no archive; a client that stops reading (cancels) does not.
   * `stillCurrent`, when given, is asked before each later page is read (`self`: whether the
   * requesting device's access token is still current): once it answers false the stream is
   * errored as on a failure, the hit kept. A slow reader's export can run for hours, and one whose
   * device was revoked (or whose erasure started) went on reading the log, rows that arrived
   * after the revocation included.
   */
  async export(
    userId: string,
    requestedBy: "self" | "admin",
    options: { stillCurrent?: () => Promise<boolean> } = {},
  ): Promise<ReadableStream<Uint8Array>> {
    const limiter = requestedBy === "self" ? this.deps.rateLimiter : undefined;
    if (limiter)
      await spendOrRefuse(
        limiter,
        SELF_EXPORT_LIMIT,
        userId,
        "too many exports of this account, retry later",
      );
    // Five failures in an hour (the database or the log down) locked the person out of their
    // own data for the rest of it, without one archive given.
    const giveBack = () => limiter?.release(SELF_EXPORT_LIMIT, userId).catch(() => {});
    let frame: ArchiveFrame;
    try {
      frame = await this.frame(userId, requestedBy);
    } catch (error) {
      await giveBack();
      throw error;
    }
    const chunks = this.chunks(userId, frame, options.stillCurrent);
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          try {
            const { value, done } = await chunks.next();
            if (done) controller.close();
            else controller.enqueue(value);
          } catch (error) {
            if (error instanceof ExportRevoked) {
              this.deps.logger?.warn({ requestedBy }, "export stopped mid-stream: its session was revoked");
              controller.error(new Error("export stopped: session revoked"));
              return;
            }
            this.deps.logger?.warn(
              { requestedBy, failure: error instanceof Error ? error.name : typeof error },
              "export failed mid-stream; response aborted",
            );
            await giveBack();
            // Not the error itself: the server prints a stream's error, and a store's error may
            // quote its query's parameters (a user id).
            controller.error(new Error("export failed mid-stream"));
          }
        },
        cancel: async () => {
          await chunks.return(undefined);
        },
      },
      // One chunk (one page) ahead of the client at most.
      { highWaterMark: 1 },
    );
  }

  /**
   * The document's text in pieces: the head, the pages of `messages.metadata` and then of
   * `messages.queued`, the middle, the pages of `audit`, the tail. Each page is read on a later turn of the event loop than the one
   * before (the embedded log reads synchronously), so other requests run between pages.
   */
  private async *chunks(
    userId: string,
    frame: ArchiveFrame,
    stillCurrent?: () => Promise<boolean>,
  ): AsyncGenerator<Uint8Array, void, undefined> {
    const { log } = this.deps;
    const rows = this.deps.pageRows ?? EXPORT_PAGE_ROWS;
    const check = async () => {
      if (stillCurrent && !(await stillCurrent())) throw new ExportRevoked();
    };
    const list = async function* <T>(
      first: LogPage<T> | null,
      read: (after: number | null) => Promise<LogPage<T>>,
    ): AsyncGenerator<Uint8Array, void, undefined> {
      if (!first) await check();
      let page = first ?? (await read(null));
      let separator = "";
      for (;;) {
        if (page.rows.length > 0) {
          yield encodeRows(page.rows, separator);
          separator = ",";
        }
        if (page.next === null) return;
        const after: number = page.next;
        await nextTurn();
        await check();
        page = await read(after);
      }
    };
    yield Buffer.from(frame.head);
    yield* list(frame.firstMetadata, (after) => log.metadataPage(userId, after, rows.metadata));
    yield Buffer.from('],"queued":[');
    await nextTurn();
    yield* list(null, (after) => log.undeliveredPage(userId, after, rows.queued));
    yield Buffer.from(frame.middle);
    await nextTurn();
    const auditPage = new AuditPages(this.deps.audit, userId, frame.auditUpTo, rows.audit);
    yield* list(frame.firstAudit, (after) => auditPage.read(after ?? 0));
    yield Buffer.from(frame.tail);
  }

  /**
   * Reads everything of the archive but the log's two lists and the audit entries (bounded: a few
   * rows per device, group, invitation and block), and the first page of the metadata and of the
   * audit entries (those up to the chain's newest now, so not the export's own), then audits the export:
   * a store that is down fails here, before a byte is sent. The audit entry is written before the
   * stream starts, as the data is about to be disclosed: an export cut off mid-way (or whose client
   * left) was still partly disclosed, so it stays audited.
   */
  private async frame(userId: string, requestedBy: "self" | "admin"): Promise<ArchiveFrame> {
    const { db, log, presence, audit, config } = this.deps;
    const [account] = await db
      .select({ userId: accounts.id, username: accounts.username, createdAt: accounts.createdAt })
      .from(accounts)
      .where(eq(accounts.id, userId));
    if (!account) throw new DomainError("not_found", "no such user");
    const deviceRows = await db
      .select()
      .from(devices)
      .where(eq(devices.userId, userId))
      .orderBy(asc(devices.deviceId));
    // The ids and digests of one-time keys handed out in bundles (the ROPA's "public keys"),
    // counted per device and kind as the remaining one-time keys are.
    const handedOutCounts = await db
      .select({ deviceId: handedOutPreKeys.deviceId, kind: handedOutPreKeys.kind, n: count() })
      .from(handedOutPreKeys)
      .where(eq(handedOutPreKeys.userId, userId))
      .groupBy(handedOutPreKeys.deviceId, handedOutPreKeys.kind);
    const keys = await Promise.all(
      deviceRows.map(async (d) => {
        const where = (table: typeof identityKeys | typeof signedPreKeys | typeof kyberLastResortKeys) =>
          eq(table.userId, userId);
        const byDevice = <T extends { deviceId: number }>(rows: T[]) =>
          rows.filter((r) => r.deviceId === d.deviceId);
        const [identity] = byDevice(await db.select().from(identityKeys).where(where(identityKeys)));
        const [signed] = byDevice(await db.select().from(signedPreKeys).where(where(signedPreKeys)));
        const [lastResort] = byDevice(
          await db.select().from(kyberLastResortKeys).where(where(kyberLastResortKeys)),
        );
        const preKeys = byDevice(
          await db.select().from(oneTimePreKeys).where(eq(oneTimePreKeys.userId, userId)),
        );
        const kyberKeys = byDevice(
          await db.select().from(oneTimeKyberPreKeys).where(eq(oneTimeKyberPreKeys.userId, userId)),
        );
        const handedOut = handedOutCounts.filter((r) => r.deviceId === d.deviceId);
        const handedOutOf = (kind: "ec" | "kyber") => handedOut.find((r) => r.kind === kind)?.n ?? 0;
        return {
          deviceId: d.deviceId,
          identityKey: identity ? b64(identity.publicKey) : null,
          signedPreKey: signed ? { keyId: signed.keyId, publicKey: b64(signed.publicKey) } : null,
          kyberLastResortKey: lastResort
            ? { keyId: lastResort.keyId, publicKey: b64(lastResort.publicKey) }
            : null,
          oneTimePreKeys: preKeys.length,
          oneTimeKyberPreKeys: kyberKeys.length,
          handedOutPreKeys: handedOutOf("ec"),
          handedOutKyberPreKeys: handedOutOf("kyber"),
        };
      }),
    );
    const memberships = await db
      .select({
        groupId: groups.id,
        name: groups.name,
        role: groupMembers.role,
        addedAt: groupMembers.addedAt,
      })
      .from(groupMembers)
      .innerJoin(groups, eq(groups.id, groupMembers.groupId))
      .where(eq(groupMembers.userId, userId));
    const invitationsReceived = await db
      .select({
        groupId: groupInvitations.groupId,
        name: groups.name,
        invitedBy: groupInvitations.invitedBy,
        invitedAt: groupInvitations.invitedAt,
      })
      .from(groupInvitations)
      .innerJoin(groups, eq(groups.id, groupInvitations.groupId))
      .where(eq(groupInvitations.userId, userId))
      .orderBy(asc(groupInvitations.invitedAt));
    const invitationsSent = await db
      .select({
        groupId: groupInvitations.groupId,
        invitee: groupInvitations.userId,
        invitedAt: groupInvitations.invitedAt,
      })
      .from(groupInvitations)
      .where(eq(groupInvitations.invitedBy, userId))
      .orderBy(asc(groupInvitations.invitedAt));
    const blockRows = await db
      .select({ userId: blocks.blockedUserId, createdAt: blocks.createdAt })
      .from(blocks)
      .where(eq(blocks.userId, userId))
      .orderBy(asc(blocks.createdAt));
    const identities = await db.select().from(oidcIdentities).where(eq(oidcIdentities.userId, userId));
    const [state] = await presence.states([userId]);
    const pageRows = this.deps.pageRows ?? EXPORT_PAGE_ROWS;
    // Before the export's own entry is written: the archive lists what was recorded until now.
    const auditUpTo = await audit.lastSeq();
    const firstAudit = await new AuditPages(audit, userId, auditUpTo, pageRows.audit).read(0);
    const firstMetadata = await log.metadataPage(userId, null, pageRows.metadata);
    // The same document, key for key, as JSON.stringify of the whole archive gave when it was built
    // at once: the object before `messages` without its closing brace, the two lists streamed, and
    // the object after them without its opening one.
    const before = {
      format: "clearbox-export/1",
      generatedAt: new Date().toISOString(),
      account: { ...account, createdAt: account.createdAt.toISOString() },
      // The identity provider's stable identifier of you (iss, sub): how your sign-ins are recognised.
      identityProviderLinks: identities.map((i) => ({
        issuer: i.issuer,
        subject: i.subject,
        linkedAt: i.linkedAt.toISOString(),
        lastSignInAt: i.lastSignInAt.toISOString(),
      })),
      devices: deviceRows.map((d) => ({
        deviceId: d.deviceId,
        name: d.name,
        registrationId: d.registrationId,
        createdAt: d.createdAt.toISOString(),
        lastSeen: d.lastSeen.toISOString(),
      })),
      publicKeys: keys,
      groups: memberships.map((m) => ({ ...m, addedAt: m.addedAt.toISOString() })),
      // Pending invitations: to you (accept or decline them), and the ones you sent.
      invitations: {
        received: invitationsReceived.map((i) => ({ ...i, invitedAt: i.invitedAt.toISOString() })),
        sent: invitationsSent.map((i) => ({ ...i, invitedAt: i.invitedAt.toISOString() })),
      },
      // The users you block. Who blocks you is theirs to know (Art. 15(4)) and is not listed.
      blocks: blockRows.map((b) => ({ userId: b.userId, blockedAt: b.createdAt.toISOString() })),
    };
    // `messages.metadata`: every envelope sent by or to the user; `messages.queued`: ciphertexts
    // still waiting for one of the user's devices (the server cannot read them).
    const note =
      "metadata of envelopes sent by or to you; contents are end-to-end encrypted and kept only until delivered";
    // After `messages`: `presence`, then `audit` streamed, then `processing`.
    const presenceJson = JSON.stringify({ presence: state ?? { user: userId, online: false, lastSeen: 0 } });
    const processingJson = JSON.stringify({ processing: processingInformation(config) });
    await audit.record({
      action: "export",
      actor: requestedBy === "self" ? { user: userId } : "admin",
      subject: userId,
      details: {
        devices: deviceRows.length,
        groups: memberships.length,
        invitations: invitationsReceived.length + invitationsSent.length,
        blocks: blockRows.length,
      },
    });
    return {
      head: `${JSON.stringify(before).slice(0, -1)},"messages":{"note":${JSON.stringify(note)},"metadata":[`,
      middle: `]},${presenceJson.slice(1, -1)},"audit":[`,
      tail: `],${processingJson.slice(1)}`,
      firstMetadata,
      firstAudit,
      auditUpTo,
    };
  }
}

/**
 * The audit entries about a user, page by page (keyset on seq, up to `upTo`), as they show in the
 * export: the user's own pseudonym stays (it is theirs), another person's (the actor who added
 * them to a group, the member they added) becomes `OTHER_USER`. A pseudonym is the same in every
 * entry about its person, so showing it would let whoever holds this export link that person's
 * entries, and keep linking them after the person's erasure, which must make their entries
 * unlinkable. The user's pseudonym is asked for once, at the first entry (asking creates a key).
 */
class AuditPages {
  private own: string | undefined;

  constructor(
    private readonly audit: AuditTrail,
    private readonly userId: string,
    private readonly upTo: number,
    private readonly limit: number,
  ) {}

  /** The page after seq `after`; `next` is null once a page came back short. */
  async read(after: number): Promise<LogPage<AuditEntry>> {
    const entries = await this.audit.entriesAboutPage(this.userId, {
      after,
      limit: this.limit,
      upTo: this.upTo,
    });
    const last = entries.at(-1);
    const next = last && entries.length === this.limit ? last.seq : null;
    if (!last) return { rows: [], next };
    this.own ??= await this.audit.pseudonym(this.userId);
    const own = this.own;
    const shown = (who: string | null) =>
      who === null || who === own || who === "admin" || who === "system" ? who : OTHER_USER;
    return {
      rows: entries.map((e) => ({ ...e, actor: shown(e.actor) as string, subject: shown(e.subject) })),
      next,
    };
  }
}

/**
 * The HTTP answer for an export stream: 200, JSON, sent as it is read (chunked). A stream that
 * fails mid-way aborts the response (the connection is closed before its last chunk), so a client
 * sees a failed download, never a shorter document that parses.
 */
export function exportResponse(archive: ReadableStream<Uint8Array>): Response {
  return new Response(archive, {
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
}

/** How an export names another person in an audit entry (never by their pseudonym). */
export const OTHER_USER = "another user";

/** The export's session ended while it streamed (`stillCurrent` answered false). */
class ExportRevoked extends Error {
  override name = "ExportRevoked";
}
