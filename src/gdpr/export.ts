import { asc, eq } from "drizzle-orm";
import type { AuditTrail } from "../audit/types.ts";
import type { Config } from "../config/index.ts";
import type { Db } from "../db/index.ts";
import {
  accounts,
  blocks,
  devices,
  groupInvitations,
  groupMembers,
  groups,
  identityKeys,
  kyberLastResortKeys,
  oidcIdentities,
  oneTimeKyberPreKeys,
  oneTimePreKeys,
  signedPreKeys,
} from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { EnvelopeLog } from "../messaging/envelope-log.ts";
import type { Presence } from "../messaging/presence.ts";
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
 * builds the archive on the node's event loop: one of 1,500 queued 150 KB messages took 1.6-2.7
 * CPU-seconds and held `/healthz` for seconds (docs/BENCHMARKS.md, "Exports"), and nothing stopped a
 * client from asking again at once, or many times in parallel. A person asks for their data a
 * few times at most; repeated requests are "excessive" under GDPR Art. 12(5). The admin twin is
 * not limited.
 */
export const SELF_EXPORT_LIMIT = {
  name: "export",
  limit: 5,
  windowMs: 60 * 60_000,
} satisfies RateLimitRule;

/** Builds the machine-readable archive of everything held about one user (GDPR Art. 15 and 20). */
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
    },
  ) {}

  /**
   * The archive of `userId` (docs/GDPR.md). `requestedBy: "self"` spends one of the account's
   * `SELF_EXPORT_LIMIT` first: `rate_limited` (with `retryAfterSeconds`) past it, before anything
   * is read or audited; an export that fails (a store unreachable: the error is thrown on) gives
   * it back, since the person got nothing. `not_found` when the account does not exist.
   */
  async export(userId: string, requestedBy: "self" | "admin") {
    const limiter = requestedBy === "self" ? this.deps.rateLimiter : undefined;
    if (limiter)
      await spendOrRefuse(
        limiter,
        SELF_EXPORT_LIMIT,
        userId,
        "too many exports of this account, retry later",
      );
    try {
      return await this.archive(userId, requestedBy);
    } catch (error) {
      // Five failures in an hour (the database or the log down) locked the person out of their
      // own data for the rest of it, without one archive given.
      if (limiter) await limiter.release(SELF_EXPORT_LIMIT, userId).catch(() => {});
      throw error;
    }
  }

  /** Reads and audits the archive of `userId` (`export`, without the budget). */
  private async archive(userId: string, requestedBy: "self" | "admin") {
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
        return {
          deviceId: d.deviceId,
          identityKey: identity ? b64(identity.publicKey) : null,
          signedPreKey: signed ? { keyId: signed.keyId, publicKey: b64(signed.publicKey) } : null,
          kyberLastResortKey: lastResort
            ? { keyId: lastResort.keyId, publicKey: b64(lastResort.publicKey) }
            : null,
          oneTimePreKeys: preKeys.length,
          oneTimeKyberPreKeys: kyberKeys.length,
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
    const archive = {
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
      messages: {
        note: "metadata of envelopes sent by or to you; contents are end-to-end encrypted and kept only until delivered",
        metadata: await log.metadataOf(userId),
        // Ciphertexts still waiting for one of your devices (the server cannot read them).
        queued: await log.undelivered(userId),
      },
      presence: state ?? { user: userId, online: false, lastSeen: 0 },
      audit: await this.auditEntries(userId),
      processing: processingInformation(config),
    };
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
    return archive;
  }

  /**
   * The audit entries about the user, as they show in the export: the user's own pseudonym stays
   * (it is theirs), another person's (the actor who added them to a group, the member they added)
   * becomes `OTHER_USER`. A pseudonym is the same in every entry about its person, so showing it
   * would let whoever holds this export link that person's entries, and keep linking them after
   * the person's erasure, which must make their entries unlinkable.
   */
  private async auditEntries(userId: string) {
    const entries = await this.deps.audit.entriesAbout(userId);
    if (entries.length === 0) return entries;
    const own = await this.deps.audit.pseudonym(userId);
    const shown = (who: string | null) =>
      who === null || who === own || who === "admin" || who === "system" ? who : OTHER_USER;
    return entries.map((e) => ({ ...e, actor: shown(e.actor) as string, subject: shown(e.subject) }));
  }
}

/** How an export names another person in an audit entry (never by their pseudonym). */
export const OTHER_USER = "another user";
