import { expect, test } from "bun:test";
import postgres from "postgres";

const URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

// postgres 3.4.9 writes a query on a reserved connection whose backend died to a socket that is
// already gone, from a setImmediate, and the TypeError escapes every caller as an uncaughtException
// (porsager/postgres#1208, its reproduction). scripts/patch-postgres.mjs (npm's postinstall) guards
// it: the query is rejected with CONNECTION_CLOSED and the process lives.
test("a query on a reserved connection whose backend was terminated is rejected, not thrown past its caller", async () => {
  const sql = postgres(URL, { max: 2, onnotice: () => {} });
  const killer = postgres(URL, { max: 1, onnotice: () => {} });
  try {
    const reserved = await sql.reserve();
    const [{ pid }] = await reserved`select pg_backend_pid() as pid`;
    await killer`select pg_terminate_backend(${pid})`;
    const first = await reserved`select 1`.then(
      () => "answered",
      (error: { code?: string }) => error.code,
    );
    // The server's reset reaches the query in flight (ECONNRESET here, CONNECTION_CLOSED elsewhere).
    expect(first).not.toBe("answered");
    const second = await reserved`select 1`.then(
      () => "answered",
      (error: { code?: string }) => error.code,
    );
    expect(second).toBe("CONNECTION_CLOSED");
    reserved.release();
  } finally {
    await Promise.all([sql.end({ timeout: 1 }), killer.end({ timeout: 1 })]);
  }
});
