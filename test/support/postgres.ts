import { randomBytes } from "node:crypto";
import postgres from "postgres";

/** The server tests create their databases on; its own database is never written to. */
export const TEST_POSTGRES_URL =
  process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** A database of its own for one test file, created empty and dropped afterwards. */
export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

/** Creates `cb_test_<random>` on the test server so runs and files never see each other's rows. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `cb_test_${randomBytes(6).toString("hex")}`;
  const admin = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(TEST_POSTGRES_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const sql = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists ${name} with (force)`);
      } finally {
        await sql.end();
      }
    },
  };
}
