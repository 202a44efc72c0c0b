/**
 * `npm run bench:revalidation [-- --sockets N --passes P]`: what one pass of the socket revalidation
 * (`SocketRevalidation.run`, every WS_REVALIDATE_INTERVAL_SECONDS on every node) costs with N open
 * sockets (default 15,000), one device per account (the most users per query), on PGlite in memory
 * and on PostgreSQL at LOADTEST_POSTGRES_URL (an admin connection: a database `cb_bench_…` of its own
 * is created and dropped). The sockets are the gateway's own `DeviceConnection`s in a
 * `SocketRegistry`, over stand-in Bun sockets (nothing is sent). Prints, per pass: wall time, this
 * process's CPU time (PGlite's included; a PostgreSQL server's is not), queries, and the longest
 * gap of a 1 ms timer (how long the event loop could not serve a socket), and the machine's load.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { type Database, openDatabase } from "../db/index.ts";
import { accounts, devices } from "../db/schema.ts";
import { DeviceService } from "../devices/service.ts";
import { DeviceConnection, type DeviceSocket } from "../gateway/connection.ts";
import { SocketRegistry } from "../gateway/socket-registry.ts";
import { REVALIDATION_BATCH, SocketRevalidation } from "../gateway/socket-revalidation.ts";
import { TokenBucket } from "../gateway/token-bucket.ts";
import { createLogger } from "../observability/logger.ts";
import type { MessageTallies } from "../observability/metrics.ts";
import { exitOnHelp } from "./bench-usage.ts";

exitOnHelp(
  `usage: npm run bench:revalidation [-- --sockets N --passes P]\n\nOne socket revalidation pass over N sockets (default 15000) on PGlite and on PostgreSQL at\nLOADTEST_POSTGRES_URL, P passes each (default 5): wall and CPU time, queries, longest event-loop gap.`,
);
const { values } = parseArgs({
  options: { sockets: { type: "string", default: "15000" }, passes: { type: "string", default: "5" } },
});
const sockets = Number(values.sockets);
const passes = Number(values.passes);
if (!Number.isInteger(sockets) || sockets < 1 || !Number.isInteger(passes) || passes < 1) {
  console.error("bench:revalidation: --sockets and --passes are whole numbers, at least 1");
  process.exit(2);
}
const POSTGRES_URL = process.env.LOADTEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** The longest gap between runs of a 1 ms timer while `run` runs, ms. */
async function longestGap<T>(run: () => Promise<T>): Promise<{ result: T; gapMs: number }> {
  let last = performance.now();
  let gapMs = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    gapMs = Math.max(gapMs, now - last);
    last = now;
  }, 1);
  const result = await run();
  clearInterval(timer);
  return { result, gapMs: Math.max(gapMs, performance.now() - last) };
}

async function measure(name: string, database: Database): Promise<void> {
  const { db } = database;
  const users = Array.from({ length: sockets }, () => randomUUID());
  for (let i = 0; i < users.length; i += 1000) {
    const chunk = users.slice(i, i + 1000);
    await db.insert(accounts).values(chunk.map((id) => ({ id, username: `bench_${id}` })));
    await db
      .insert(devices)
      .values(chunk.map((userId) => ({ userId, deviceId: 1, registrationId: 1, tokenGeneration: 7 })));
  }
  const registry = new SocketRegistry();
  const tallies = {} as MessageTallies;
  const newBucket = () => new TokenBucket(100, 200);
  for (const userId of users) {
    const ws = { data: { principal: { userId, deviceId: 1 }, generation: 7, expiresAt: 0 }, close() {} };
    registry.add(
      new DeviceConnection(
        ws as unknown as DeviceSocket,
        { userId, deviceId: 1 },
        newBucket,
        randomUUID(),
        tallies,
      ),
    );
  }
  const deviceService = new DeviceService(db);
  let queries = 0;
  const revalidation = new SocketRevalidation({
    registry,
    generations: async (userIds) => {
      queries++;
      const rows = await deviceService.tokenGenerations(userIds);
      return new Map(rows.map((r) => [`${r.userId}.${r.deviceId}`, r.generation]));
    },
    fenced: () => false,
    logger: createLogger({ level: "warn", nodeId: "bench" }),
  });
  for (let pass = 0; pass <= passes; pass++) {
    queries = 0;
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    const { result, gapMs } = await longestGap(() => revalidation.run());
    const wallMs = performance.now() - t0;
    const { user, system } = process.cpuUsage(cpu);
    // Pass 0 warms the caches and JIT; it is printed but marked.
    console.log(
      `${name}${pass === 0 ? " (warm-up)" : ""}: ${result.checked} sockets checked, ${result.closed} closed, ${queries} queries, ` +
        `wall ${wallMs.toFixed(1)} ms, cpu ${((user + system) / 1000).toFixed(1)} ms, longest loop gap ${gapMs.toFixed(1)} ms`,
    );
  }
}

console.log(
  `bench:revalidation: ${sockets} sockets, ${REVALIDATION_BATCH} per query, load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
);
const pglite = await openDatabase({ dataDir: null });
try {
  await measure("PGlite", pglite);
} finally {
  await pglite.close();
}
const name = `cb_bench_${randomBytes(5).toString("hex")}`;
const admin = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database ${name}`);
try {
  const url = new URL(POSTGRES_URL);
  url.pathname = `/${name}`;
  const database = await openDatabase({ databaseUrl: url.toString(), dataDir: null });
  try {
    await measure("PostgreSQL", database);
  } finally {
    await database.close();
  }
} finally {
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.end();
}
console.log(
  `load after: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
);
