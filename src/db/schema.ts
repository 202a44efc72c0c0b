import {
  type AnyPgColumn,
  customType,
  foreignKey,
  index,
  integer,
  pgTable,
  primaryKey,
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
