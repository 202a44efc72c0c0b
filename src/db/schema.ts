import { sql } from "drizzle-orm";
import {
  type AnyPgColumn,
  bigint,
  customType,
  foreignKey,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  smallint,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";

/**
 * One person's account. The password is only ever stored as an argon2id hash; accounts provisioned
 * by the identity provider have none (null), and no password ever matches them.
 */
export const accounts = pgTable("accounts", {
  id: uuid("id").primaryKey().defaultRandom(),
  username: text("username").notNull().unique(),
  passwordHash: text("password_hash"),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

/** A device of an account; ids 1-127 because libsignal addresses allow no more. */
export const devices = pgTable(
  "devices",
  {
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    deviceId: integer("device_id").notNull(),
    registrationId: integer("registration_id").notNull(),
    name: text("name"),
    // Bumped to revoke every access token of the device at once (tokens carry the generation they were issued at).
    tokenGeneration: integer("token_generation").notNull().default(0),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    lastSeen: timestamp("last_seen", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/**
 * A device removed whose follow-ups (its user actor and offline queue, its log rows, its sockets)
 * have not all finished: written in the removal's transaction, deleted once they have. Its id is not
 * given to a new device meanwhile, so a late follow-up cannot reach a device that reused the id; the
 * retention job finishes rows a node left behind (it died, or a backing service was away).
 * `removed_at` is when the removal, or the last attempt to finish it, started: an attempt claims the
 * row by setting it, and deletes the row only if it still holds that value (DeviceService).
 * `attempts`: how many times its follow-ups were started (the removal's own run, then one per
 * retention pass that claimed it); a row whose count keeps rising holds its device id for good
 * (`clearbox_device_removal_attempts_max`, an error log line per failed pass).
 */
export const deviceRemovals = pgTable(
  "device_removals",
  {
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    deviceId: integer("device_id").notNull(),
    removedAt: timestamp("removed_at", { withTimezone: true }).notNull().defaultNow(),
    attempts: integer("attempts").notNull().default(1),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/** Refresh tokens, stored as SHA-256 hashes; a spent one presented again revokes its device's tokens. */
export const refreshTokens = pgTable(
  "refresh_tokens",
  {
    tokenHash: text("token_hash").primaryKey(),
    userId: uuid("user_id").notNull(),
    deviceId: integer("device_id").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
    spentAt: timestamp("spent_at", { withTimezone: true }),
  },
  (t) => [
    foreignKey({
      columns: [t.userId, t.deviceId],
      foreignColumns: [devices.userId, devices.deviceId],
    }).onDelete("cascade"),
    index("refresh_tokens_device_idx").on(t.userId, t.deviceId),
  ],
);

/** PostgreSQL bytea as a Uint8Array on both drivers (postgres-js hands back a Buffer, PGlite a Uint8Array). */
const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({
  dataType: () => "bytea",
  fromDriver: (value) => new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
});

/** Columns every key table shares: the owning device, removed with it. */
const deviceColumns = () => ({
  userId: uuid("user_id").notNull(),
  deviceId: integer("device_id").notNull(),
});

const ownedByDevice = (t: { userId: AnyPgColumn; deviceId: AnyPgColumn }) =>
  foreignKey({
    columns: [t.userId, t.deviceId],
    foreignColumns: [devices.userId, devices.deviceId],
  }).onDelete("cascade");

/** A device's Signal identity public key (33 bytes, type 0x05); every other key of the device is signed by it. */
export const identityKeys = pgTable(
  "identity_keys",
  {
    ...deviceColumns(),
    publicKey: bytea("public_key").notNull(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] }), ownedByDevice(t)],
);

/** The device's current signed EC prekey (one per device, replaced on upload). */
export const signedPreKeys = pgTable(
  "signed_pre_keys",
  {
    ...deviceColumns(),
    keyId: integer("key_id").notNull(),
    publicKey: bytea("public_key").notNull(),
    signature: bytea("signature").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] }), ownedByDevice(t)],
);

/** The device's last-resort Kyber1024 key: handed out whenever its one-time Kyber keys are gone. */
export const kyberLastResortKeys = pgTable(
  "kyber_last_resort_keys",
  {
    ...deviceColumns(),
    keyId: integer("key_id").notNull(),
    publicKey: bytea("public_key").notNull(),
    signature: bytea("signature").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] }), ownedByDevice(t)],
);

/** One-time EC prekeys; each is deleted as it is handed out, so no two fetchers get the same one. */
export const oneTimePreKeys = pgTable(
  "one_time_pre_keys",
  {
    ...deviceColumns(),
    keyId: integer("key_id").notNull(),
    publicKey: bytea("public_key").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.keyId] }), ownedByDevice(t)],
);

/** One-time signed Kyber1024 prekeys; consumed like one-time EC prekeys. */
export const oneTimeKyberPreKeys = pgTable(
  "one_time_kyber_pre_keys",
  {
    ...deviceColumns(),
    keyId: integer("key_id").notNull(),
    publicKey: bytea("public_key").notNull(),
    signature: bytea("signature").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.keyId] }), ownedByDevice(t)],
);

/**
 * The one-time keys (EC and Kyber) handed out in a bundle: key id and SHA-256 of the public key. An
 * upload that lists one of them again (a client retrying an upload whose answer it lost, after
 * fetches took some of its keys) skips it, so a key handed out is never handed out again; the same
 * id with another key (ids wrap) is a new key and is stored. Goes with the device, or with the
 * retention pass HANDED_OUT_PRE_KEY_DAYS after `handed_out_at` (migration 0016): a retry comes
 * within minutes of the upload it repeats, not a month later.
 */
export const handedOutPreKeys = pgTable(
  "handed_out_pre_keys",
  {
    ...deviceColumns(),
    kind: text("kind", { enum: ["ec", "kyber"] }).notNull(),
    keyId: integer("key_id").notNull(),
    publicKeySha256: bytea("public_key_sha256").notNull(),
    /** When the key was last handed out (a fetch); the retention pass prunes by it. */
    handedOutAt: timestamp("handed_out_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.userId, t.deviceId, t.kind, t.keyId] }),
    ownedByDevice(t),
    index("handed_out_pre_keys_handed_out_at_idx").on(t.handedOutAt),
  ],
);

/** A group chat; its members and admins are in group_members. */
export const groups = pgTable("groups", {
  id: uuid("id").primaryKey().defaultRandom(),
  name: text("name").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  /**
   * Bumped by triggers (migration 0010) in the same transaction as any change to who a group send
   * reaches: a member added or removed, a member's device added or removed, a block set or lifted
   * by a member. The group actor caches the members and their devices and re-reads them only when
   * this differs from the version it read them at (docs/MESSAGING.md, "The member directory cache").
   */
  membersVersion: bigint("members_version", { mode: "number" }).notNull().default(0),
});

/** Membership of a group, with the member's role; leaves with the account or the group. */
export const groupMembers = pgTable(
  "group_members",
  {
    groupId: uuid("group_id")
      .notNull()
      .references(() => groups.id, { onDelete: "cascade" }),
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    role: text("role", { enum: ["admin", "member"] }).notNull(),
    addedAt: timestamp("added_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.groupId, t.userId] }), index("group_members_user_idx").on(t.userId)],
);

/**
 * A pending invitation to a group (issue 13 item 7): membership needs the invitee's consent. Until
 * they accept, the invitee is not a member: no group messages, not listed, not in the fan-out.
 * Personal data of both the invitee and the inviter: exported, and erased with either (cascade).
 */
export const groupInvitations = pgTable(
  "group_invitations",
  {
    groupId: uuid("group_id")
      .notNull()
      .references(() => groups.id, { onDelete: "cascade" }),
    /** The invitee. */
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    invitedBy: uuid("invited_by")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    invitedAt: timestamp("invited_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.groupId, t.userId] }),
    index("group_invitations_user_idx").on(t.userId),
    index("group_invitations_invited_by_idx").on(t.invitedBy),
  ],
);

/**
 * Who blocked whom (issue 13 item 7): a blocked user cannot message, invite or watch the presence
 * of the blocker. Personal data of both: the blocker's export lists it; erased with either (cascade).
 */
export const blocks = pgTable(
  "blocks",
  {
    /** The blocker. */
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    blockedUserId: uuid("blocked_user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.userId, t.blockedUserId] }),
    index("blocks_blocked_user_idx").on(t.blockedUserId),
  ],
);

/**
 * The durable envelope log: one row per recipient device, written before the sender hears
 * `accepted`. Acked rows keep only metadata (body null) until retention removes them.
 */
export const envelopes = pgTable(
  "envelopes",
  {
    seq: bigint("seq", { mode: "number" }).generatedAlwaysAsIdentity(),
    id: uuid("id").notNull(),
    senderUser: uuid("sender_user").notNull(),
    senderDevice: integer("sender_device").notNull(),
    recipientUser: uuid("recipient_user").notNull(),
    recipientDevice: integer("recipient_device").notNull(),
    groupId: uuid("group_id"),
    ts: bigint("ts", { mode: "number" }).notNull(),
    type: smallint("type").notNull(),
    body: bytea("body"),
    state: text("state", { enum: ["pending", "queued", "acked"] }).notNull(),
  },
  (t) => [
    // The identity (a re-sent id is a no-op: ON CONFLICT DO NOTHING), led by the recipient device
    // and id so the same index serves acks and `queued` marks (by recipient device and id), device
    // erasure and the recipient half of export and user erasure: one index entry fewer per row
    // written and per ack than a separate (recipient_user, recipient_device, id) index (migration
    // 0011, docs/BENCHMARKS.md "Fewer index entries per 1:1 message").
    primaryKey({ columns: [t.recipientUser, t.recipientDevice, t.id, t.senderUser, t.senderDevice] }),
    // Unacked envelopes only: acked rows (metadata kept until retention) must not slow delivery reads.
    index("envelopes_recipient_idx")
      .on(t.recipientUser, t.recipientDevice, t.seq)
      .where(sql`${t.state} <> 'acked'`),
    // The sender half of export and user erasure; `queuedRecipientsOf`.
    index("envelopes_sender_idx").on(t.senderUser),
    // Retention (`ts < cutoff`).
    index("envelopes_ts_idx").on(t.ts),
  ],
);

/**
 * Group sends, one row each (docs/MESSAGING.md, "Group messages are stored once"): written before
 * the sender hears `accepted`, with the member devices fixed at send time (`recipients`, userId →
 * device ids). An expansion writes the per-device `envelopes` rows off the sender's path and then
 * clears `body` and `recipients` in the same transaction; the row stays, without them, so a
 * re-sent id is still recognised, until retention removes it.
 */
export const groupMessages = pgTable(
  "group_messages",
  {
    seq: bigint("seq", { mode: "number" }).generatedAlwaysAsIdentity(),
    id: uuid("id").notNull(),
    senderUser: uuid("sender_user").notNull(),
    senderDevice: integer("sender_device").notNull(),
    groupId: uuid("group_id").notNull(),
    ts: bigint("ts", { mode: "number" }).notNull(),
    type: smallint("type").notNull(),
    body: bytea("body"),
    recipients: jsonb("recipients").$type<Record<string, number[]>>(),
  },
  (t) => [
    primaryKey({ columns: [t.senderUser, t.senderDevice, t.id] }),
    // Rows still to expand only: expansions take them oldest first; acks find them by id.
    index("group_messages_unexpanded_idx").on(t.seq).where(sql`${t.recipients} is not null`),
    index("group_messages_unexpanded_id_idx").on(t.id).where(sql`${t.recipients} is not null`),
    index("group_messages_ts_idx").on(t.ts),
  ],
);

/**
 * The audit log: append-only and hash-chained (hash = SHA-256 of prev_hash and the row's canonical
 * content). Subjects and actors are pseudonyms (HMAC of the user id under a per-subject key kept in
 * audit_subject_keys); a trigger refuses UPDATE and DELETE (see drizzle/0004_audit_append_only.sql).
 */
export const auditLog = pgTable(
  "audit_log",
  {
    seq: bigint("seq", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    at: timestamp("at", { withTimezone: true, mode: "string" }).notNull(),
    action: text("action").notNull(),
    /** Pseudonym of the acting user, or `admin` / `system`. */
    actor: text("actor").notNull(),
    /** Pseudonym of the person the entry is about, if any. */
    subject: text("subject"),
    /** What happened, without personal data (counts, ids of non-personal objects). */
    details: jsonb("details").$type<Record<string, unknown>>().notNull(),
    prevHash: text("prev_hash").notNull(),
    hash: text("hash").notNull(),
  },
  (t) => [index("audit_log_subject_idx").on(t.subject), index("audit_log_at_idx").on(t.at)],
);

/** Per-subject pseudonym keys, kept apart from the log; erasure deletes the key, anonymising old entries. */
export const auditSubjectKeys = pgTable("audit_subject_keys", {
  userId: uuid("user_id").primaryKey(),
  key: bytea("key").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

/** Erasure jobs (GDPR Art. 17): durable, resumable, with the signed receipt when done. */
export const erasures = pgTable("erasures", {
  id: uuid("id").primaryKey(),
  /** The user being erased; cleared when the job is done so the job row names nobody. */
  userId: uuid("user_id"),
  /**
   * The receipt's subject: 128 random bits (hex) drawn for this job, written nowhere else (jobs
   * started before issue 12 hold the audit pseudonym here).
   */
  subject: text("subject").notNull(),
  requestedBy: text("requested_by", { enum: ["self", "admin"] }).notNull(),
  status: text("status", { enum: ["pending", "done"] }).notNull(),
  /** Per store: what was removed and how many, filled in as each step completes. */
  steps: jsonb("steps").$type<Record<string, { removed: number; what: string }>>().notNull(),
  receipt: jsonb("receipt").$type<Record<string, unknown>>(),
  /**
   * The node running a pending job (its NODE_ID). Another node takes the job over only once this
   * one is no longer a live member of the ring (it died or left mid-way); null: nobody (jobs from
   * before claims, and done jobs).
   */
  claimedBy: text("claimed_by"),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  completedAt: timestamp("completed_at", { withTimezone: true }),
});

/** Server-wide secrets shared by every node (e.g. the Ed25519 key that signs erasure receipts). */
export const serverSecrets = pgTable("server_secrets", {
  name: text("name").primaryKey(),
  value: bytea("value").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

/**
 * The link between an account and its identity at an OpenID Connect provider: (issuer, subject),
 * the only stable identifier OIDC Core §5.7 guarantees (never the username or e-mail, which the
 * provider may reassign). Personal data: exported, and erased with the account (cascade).
 */
export const oidcIdentities = pgTable(
  "oidc_identities",
  {
    issuer: text("issuer").notNull(),
    subject: text("subject").notNull(),
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    linkedAt: timestamp("linked_at", { withTimezone: true }).notNull().defaultNow(),
    lastSignInAt: timestamp("last_sign_in_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.issuer, t.subject] }),
    // One identity per provider per account: a second subject can never be linked beside the first.
    uniqueIndex("oidc_identities_user_issuer_idx").on(t.userId, t.issuer),
  ],
);

/**
 * One-time sign-in codes: what an OIDC sign-in hands the client instead of tokens (never tokens in
 * a URL). Stored as SHA-256 hashes, single use, valid 60 s, bound to the client's PKCE challenge
 * when the flow had one.
 */
export const oidcSignInCodes = pgTable(
  "oidc_sign_in_codes",
  {
    codeHash: text("code_hash").primaryKey(),
    userId: uuid("user_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    /** base64url SHA-256 of the client's code_verifier (RFC 7636 S256), or null (device flow). */
    codeChallenge: text("code_challenge"),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
  },
  (t) => [index("oidc_sign_in_codes_user_idx").on(t.userId)],
);

/** `jti`s of accepted back-channel logout tokens, kept until the token's replay window ends. */
export const oidcLogoutTokens = pgTable(
  "oidc_logout_tokens",
  {
    issuer: text("issuer").notNull(),
    jti: text("jti").notNull(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.issuer, t.jti] })],
);

/**
 * Invite tokens for `REGISTRATION=invite`, issued over the admin RPC (after Synapse's registration
 * tokens). Each account creation with a token spends one use, in the same transaction as the
 * insert; who used a token is not recorded.
 */
export const registrationTokens = pgTable("registration_tokens", {
  token: text("token").primaryKey(),
  /** Accounts the token may create; null: no limit. */
  usesAllowed: integer("uses_allowed"),
  /** Accounts created with it so far. */
  completed: integer("completed").notNull().default(0),
  /** After this the token is refused; null: never expires. */
  expiresAt: timestamp("expires_at", { withTimezone: true }),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});
