import { foreignKey, index, integer, pgTable, primaryKey, text, timestamp, uuid } from "drizzle-orm/pg-core";

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
