import {
  type AnyPgColumn,
  bigint,
  customType,
  foreignKey,
  index,
  integer,
  pgTable,
  primaryKey,
  smallint,
  text,
  timestamp,
  uuid,
} from "drizzle-orm/pg-core";

/** One person's account. The password is only ever stored as an argon2id hash. */
export const accounts = pgTable("accounts", {
  id: uuid("id").primaryKey().defaultRandom(),
  username: text("username").notNull().unique(),
  passwordHash: text("password_hash").notNull(),
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

/** A group chat; its members and admins are in group_members. */
export const groups = pgTable("groups", {
  id: uuid("id").primaryKey().defaultRandom(),
  name: text("name").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
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
    primaryKey({ columns: [t.senderUser, t.senderDevice, t.id, t.recipientUser, t.recipientDevice] }),
    index("envelopes_recipient_idx").on(t.recipientUser, t.recipientDevice, t.seq),
    index("envelopes_sender_idx").on(t.senderUser),
    index("envelopes_ts_idx").on(t.ts),
  ],
);
