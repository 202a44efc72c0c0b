import { afterAll, expect, test } from "bun:test";
import postgres from "postgres";
import { DatabaseStalledError, stallWatchedSocket } from "../../src/db/stall-watch.ts";
import { TEST_POSTGRES_URL } from "../support/postgres.ts";

// The stall watch on real connections to the test server: what it must leave alone (a connection
// idle, or idle in a transaction, for longer than the limit) and what it drops (a statement that
// sends nothing for longer, as a hung server would), after which the pool serves again.
const STALL_MS = 1500;
const options = { max: 1, onnotice: () => {}, socket: stallWatchedSocket(STALL_MS) };
const sql = postgres(TEST_POSTGRES_URL, options);

afterAll(async () => {
  await sql.end({ timeout: 5 });
});

test("a connection idle, or idle in a transaction, for longer than the limit is not dropped", async () => {
  const [{ pid }] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  await Bun.sleep(STALL_MS * 3);
  const inTransaction = await sql.begin(async (tx) => {
    const [first] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    await Bun.sleep(STALL_MS * 3);
    const [second] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    return [first?.pid, second?.pid];
  });
  expect(inTransaction).toEqual([pid, pid]);
});

test("a statement the server answers nothing to for longer than the limit fails, and the pool serves again", async () => {
  const [{ pid }] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  const error = await sql`select pg_sleep(${(STALL_MS * 4) / 1000})`.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DatabaseStalledError);
  const [after] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
  expect(after?.pid).not.toBe(pid);
});
