import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { DatabaseStalledError, pgStatActivityProbe, stallWatchedSocket } from "../../src/db/stall-watch.ts";
import { TEST_POSTGRES_URL } from "../support/postgres.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";

// The stall watch on real connections to the test server: what it must leave alone (a connection
// idle, or idle in a transaction, for longer than the limit; a statement that runs or waits on a
// lock for longer, as its backend is active) and what it drops (a statement sent on a link gone
// silent, a statement silent for longer when nothing can say its backend is busy), after which the
// pool serves again.
const STALL_MS = 1500;
const base = { max: 1, onnotice: () => {} };

/** `base` with postgres.js's `socket` option, which its type declarations leave out (hence a variable). */
function watched(socket: ReturnType<typeof stallWatchedSocket>) {
  const options = { ...base, socket };
  return options;
}
/** Watched, no probe: dropped at the limit whatever the backend does. */
const bare = postgres(TEST_POSTGRES_URL, watched(stallWatchedSocket(STALL_MS)));
/** Watched as the node's pool is: asks pg_stat_activity before dropping. */
const probed = postgres(
  TEST_POSTGRES_URL,
  watched(stallWatchedSocket(STALL_MS, pgStatActivityProbe(TEST_POSTGRES_URL))),
);
/** Unwatched: holds the row lock. */
const holder = postgres(TEST_POSTGRES_URL, base);
/** Unwatched: watches the waiting statement in pg_stat_activity. */
const observer = postgres(TEST_POSTGRES_URL, base);
const table = `stallwatch_lock_${randomBytes(6).toString("hex")}`;
let proxy: TcpProxy | undefined;

beforeAll(async () => {
  await holder.unsafe(`create table ${table} (id int primary key, n int not null)`);
  await holder.unsafe(`insert into ${table} values (1, 0)`);
});

afterAll(async () => {
  // The lock holder first, so a test that failed holding the lock cannot keep the table from going.
  await Promise.all([bare, probed, holder].map((sql) => sql.end({ timeout: 5 })));
  await observer.unsafe(`drop table if exists ${table}`).catch(() => {});
  await observer.end({ timeout: 5 });
  await proxy?.close();
});

/** What `query` settled to: its value, or the error it was rejected with. */
function settled<T>(query: Promise<T>): Promise<T | unknown> {
  return query.then(
    (value) => value,
    (e: unknown) => e,
  );
}

test("a connection idle, or idle in a transaction, for longer than the limit is not dropped", async () => {
  const [{ pid }] = await bare<{ pid: number }[]>`select pg_backend_pid() as pid`;
  await Bun.sleep(STALL_MS * 3);
  const inTransaction = await bare.begin(async (tx) => {
    const [first] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    await Bun.sleep(STALL_MS * 3);
    const [second] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    return [first?.pid, second?.pid];
  });
  expect(inTransaction).toEqual([pid, pid]);
});

test("without a probe, a statement the server answers nothing to for longer than the limit fails, and the pool serves again", async () => {
  const [{ pid }] = await bare<{ pid: number }[]>`select pg_backend_pid() as pid`;
  const error = await settled(bare`select pg_sleep(${(STALL_MS * 4) / 1000})`);
  expect(error).toBeInstanceOf(DatabaseStalledError);
  const [after] = await bare<{ pid: number }[]>`select pg_backend_pid() as pid`;
  expect(after?.pid).not.toBe(pid);
});

test("a query issued right after a statement was dropped is served on a fresh connection", async () => {
  const [{ pid }] = await bare<{ pid: number }[]>`select pg_backend_pid() as pid`;
  // Issued as soon as the failure is seen, as a retry or a failure's audit write would be: it must
  // not go to the dropped connection, where it waited for good.
  const error = await bare`select pg_sleep(6)`.catch((e: unknown) => e);
  expect(error).toBeInstanceOf(DatabaseStalledError);
  const after = await Promise.race([
    bare<{ pid: number }[]>`select pg_backend_pid() as pid`.then((rows) => rows[0]?.pid),
    Bun.sleep(30_000).then(() => "hung"),
  ]);
  expect(typeof after).toBe("number");
  expect(after).not.toBe(pid);
}, 60_000);

test("a statement waiting on a row lock for longer than the limit is not dropped, and completes once the lock goes", async () => {
  const [{ pid }] = await probed<{ pid: number }[]>`select pg_backend_pid() as pid`;
  let release!: () => void;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  let locked!: () => void;
  const lockHeld = new Promise<void>((resolve) => {
    locked = resolve;
  });
  const holding = holder.begin(async (tx) => {
    await tx.unsafe(`select n from ${table} where id = 1 for update`);
    locked();
    await released;
    await tx.unsafe(`update ${table} set n = n + 10 where id = 1`);
  });
  await lockHeld;
  const update = settled(probed.unsafe(`update ${table} set n = n + 1 where id = 1 returning n`));
  // Seen waiting on the lock by the server itself, then kept waiting for three limits.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const [row] = await observer<{ wait_event_type: string | null }[]>`
      select wait_event_type from pg_stat_activity where pid = ${pid}`;
    if (row?.wait_event_type === "Lock") break;
    if (Date.now() > deadline) throw new Error("the update never waited on the lock");
    await Bun.sleep(50);
  }
  await Bun.sleep(STALL_MS * 3);
  release();
  await holding;
  const result = await update;
  expect(result).not.toBeInstanceOf(Error);
  expect((result as { n: number }[])[0]?.n).toBe(11);
  const [after] = await probed<{ pid: number }[]>`select pg_backend_pid() as pid`;
  expect(after?.pid).toBe(pid);
}, 60_000);

test("a statement running for longer than the limit is not dropped", async () => {
  const [{ pid }] = await probed<{ pid: number }[]>`select pg_backend_pid() as pid`;
  const result = await settled(probed`select pg_sleep(${(STALL_MS * 3) / 1000}), pg_backend_pid() as pid`);
  expect(result).not.toBeInstanceOf(Error);
  expect((result as { pid: number }[])[0]?.pid).toBe(pid);
}, 60_000);

test("with the probe, a statement sent on a link gone silent still fails at the limit, and a fresh connection serves", async () => {
  const direct = new URL(TEST_POSTGRES_URL);
  proxy = await startTcpProxy(TEST_POSTGRES_URL);
  const url = new URL(TEST_POSTGRES_URL);
  url.port = String(proxy.port);
  // The probe goes to the URL's server, as the pool's does, but around the proxy: what it reads is
  // the backend the statement never reached, idle.
  const linked = postgres(
    url.toString(),
    watched(
      stallWatchedSocket(STALL_MS, () =>
        pgStatActivityProbe(direct.toString())({ host: direct.hostname, port: Number(direct.port || 5432) }),
      ),
    ),
  );
  try {
    const [{ pid }] = await linked<{ pid: number }[]>`select pg_backend_pid() as pid`;
    proxy.blackHole();
    const error = await settled(linked`select 1`);
    expect(error).toBeInstanceOf(DatabaseStalledError);
    const [after] = await linked<{ pid: number }[]>`select pg_backend_pid() as pid`;
    expect(after?.pid).not.toBe(pid);
  } finally {
    await linked.end({ timeout: 1 });
  }
}, 60_000);

test("with the probe, a statement whose server cannot be asked in time fails at the limit", async () => {
  proxy ??= await startTcpProxy(TEST_POSTGRES_URL);
  const url = new URL(TEST_POSTGRES_URL);
  url.port = String(proxy.port);
  // Probe and pool both behind the proxy, which then holds everything: no answer, no probe answer.
  const linked = postgres(
    url.toString(),
    watched(stallWatchedSocket(STALL_MS, pgStatActivityProbe(url.toString()))),
  );
  try {
    await linked`select 1`;
    proxy.stall(true);
    const error = await settled(linked`select 1`);
    expect(error).toBeInstanceOf(DatabaseStalledError);
  } finally {
    proxy.stall(false);
    await linked.end({ timeout: 1 });
  }
}, 60_000);
