import { randomBytes } from "node:crypto";
import { openDatabase } from "../../src/db/index.ts";
import { MongoEnvelopeLog } from "../../src/messaging/mongo-envelope-log.ts";
import { PostgresEnvelopeLog } from "../../src/messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { createTestDatabase } from "../support/postgres.ts";
import { describeEnvelopeLog } from "./envelope-log.conformance.ts";

describeEnvelopeLog("PGlite", async (options) => {
  const database = await openDatabase({ dataDir: null });
  return { log: new PostgresEnvelopeLog(database.db, undefined, options), dispose: () => database.close() };
});

describeEnvelopeLog("PostgreSQL", async (options) => {
  const testDb = await createTestDatabase();
  const database = await openDatabase({ databaseUrl: testDb.url, dataDir: null });
  return {
    log: new PostgresEnvelopeLog(database.db, undefined, options),
    dispose: async () => {
      await database.close();
      await testDb.drop();
    },
  };
});

// No MongoDB server can run on our machines: this suite runs wherever MONGODB_URL points at one.
const mongoUrl = process.env.MONGODB_URL;
if (mongoUrl) {
  describeEnvelopeLog(
    "MongoDB",
    async () => {
      const database = `clearbox_test_${randomBytes(6).toString("hex")}`;
      const log = await MongoEnvelopeLog.open(mongoUrl, { retentionDays: 30, database });
      return {
        log,
        dispose: async () => {
          const { MongoClient } = await import("mongodb");
          const client = await MongoClient.connect(mongoUrl);
          await client.db(database).dropDatabase();
          await client.close();
          await log.close();
        },
      };
    },
    { expandsAtOnce: true },
  );
}

describeEnvelopeLog("SQLite (embedded)", async (options) => {
  const log = await SqliteEnvelopeLog.open(null, undefined, options);
  return { log, dispose: () => log.close() };
});
