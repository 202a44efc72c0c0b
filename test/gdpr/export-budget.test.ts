import { expect, test } from "bun:test";
import { PostgresAuditTrail } from "../../src/audit/service.ts";
import { loadConfig } from "../../src/config/index.ts";
import { openDatabase } from "../../src/db/index.ts";
import { accounts } from "../../src/db/schema.ts";
import { ExportService, SELF_EXPORT_LIMIT } from "../../src/gdpr/export.ts";
import { MemoryPresence } from "../../src/messaging/memory-presence.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { MemoryRateLimiter } from "../../src/ratelimit/index.ts";

test("a self export that fails gives its hit back: failures do not use up the account's 5 an hour", async () => {
  const database = await openDatabase({ dataDir: null });
  // A log that cannot be read (closed here; a store down in production): every export fails late,
  // after the account's rows were read.
  const log = await SqliteEnvelopeLog.open(null);
  await log.close();
  const rateLimiter = new MemoryRateLimiter();
  try {
    const [account] = await database.db
      .insert(accounts)
      .values({ username: "budget" })
      .returning({ id: accounts.id });
    const exports = new ExportService({
      db: database.db,
      log,
      presence: new MemoryPresence(),
      audit: new PostgresAuditTrail(database.db),
      config: loadConfig({ JWT_SECRET: "x".repeat(32) }),
      rateLimiter,
    });
    for (let i = 0; i < SELF_EXPORT_LIMIT.limit + 1; i++)
      await expect(exports.export(account.id, "self")).rejects.toThrow("envelope log is closed");
    expect((await rateLimiter.peek(SELF_EXPORT_LIMIT, account.id)).allowed).toBe(true);
    // A refusal is not a failure to give back: spent hits stay spent.
    for (let i = 0; i < SELF_EXPORT_LIMIT.limit; i++) await rateLimiter.hit(SELF_EXPORT_LIMIT, account.id);
    await expect(exports.export(account.id, "self")).rejects.toThrow("too many exports");
    expect((await rateLimiter.peek(SELF_EXPORT_LIMIT, account.id)).allowed).toBe(false);
  } finally {
    await database.close();
  }
});
