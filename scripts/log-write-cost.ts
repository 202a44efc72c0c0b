/**
 * CPU per envelope of the PostgreSQL envelope log's writes, in this process and in PostgreSQL's
 * backends: four senders each append one envelope at a time (each append awaited, so the group
 * commit writes batches of about two) and ack it once committed (not awaited; acks gather), as a
 * 1:1 conversation below the node's peak does. A fresh database on LOADTEST_POSTGRES_URL's server
 * (default the shared one at 127.0.0.1:5432) is created and dropped; 400 envelopes warm it first.
 *
 *   bun run scripts/log-write-cost.ts [envelopes=4000] [checkout=.]
 *
 * `checkout`: another checkout of ClearBox (e.g. `git worktree add --detach /tmp/base main`) whose
 * src/ is measured instead, to compare two versions alternately. Output: one JSON line with CPU
 * seconds (user + system) per 1,000 envelopes for this process (`nodeCpuPer1000`) and for the
 * database's backends (`pgCpuPer1000`, from /proc/<pid>/stat of the backends serving the database,
 * so the server must run on this machine), the group-commit writes by kind, and the wall time (ms).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import postgres from "postgres";

const envelopes = Number(process.argv[2] ?? 4000);
const checkout = resolve(process.argv[3] ?? `${import.meta.dir}/..`);
const { openDatabase } = (await import(`${checkout}/src/db/index.ts`)) as typeof import("../src/db/index.ts");
const { PostgresEnvelopeLog } = (await import(
  `${checkout}/src/messaging/postgres-envelope-log.ts`
)) as typeof import("../src/messaging/postgres-envelope-log.ts");

const serverUrl = process.env.LOADTEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const name = `cb_logcost_${randomUUID().replaceAll("-", "").slice(0, 12)}`;
const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database ${name}`);
const url = new URL(serverUrl);
url.pathname = `/${name}`;

const database = await openDatabase({ databaseUrl: url.toString(), dataDir: null, poolSize: 10 });
const writes: Record<string, number> = {};
let counting = false;
const log = new PostgresEnvelopeLog(database.db, (operation) => {
  if (counting) writes[operation] = (writes[operation] ?? 0) + 1;
});

/** CPU ticks (user + system, 1/100 s) of a process, 0 once it is gone. */
function ticks(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}
async function backendTicks(): Promise<number> {
  const rows = await admin`select pid from pg_stat_activity where datname = ${name}`;
  return rows.reduce((sum, row) => sum + ticks(row.pid as number), 0);
}

async function converse(count: number): Promise<void> {
  const senders = Array.from({ length: 4 }, async () => {
    const recipientUser = randomUUID();
    const senderUser = randomUUID();
    for (let i = 0; i < count / 4; i++) {
      const envelope = {
        id: randomUUID(),
        senderUser,
        senderDevice: 1,
        recipientUser,
        recipientDevice: 1,
        groupId: null,
        ts: Date.now(),
        type: 1,
        body: Buffer.from(randomUUID() + randomUUID()).toString("base64"),
      };
      await log.append([envelope]);
      void log.ack(recipientUser, 1, [envelope]);
    }
  });
  await Promise.all(senders);
  await Bun.sleep(200);
}

try {
  await converse(400);
  const pgBefore = await backendTicks();
  counting = true;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  await converse(envelopes);
  const cpu = process.cpuUsage(cpuBefore);
  const wallMs = Math.round(performance.now() - started);
  counting = false;
  const pgTicks = (await backendTicks()) - pgBefore;
  const per1000 = 1000 / envelopes;
  console.log(
    JSON.stringify({
      checkout,
      envelopes,
      nodeCpuPer1000: Number((((cpu.user + cpu.system) / 1e6) * per1000).toFixed(4)),
      pgCpuPer1000: Number(((pgTicks / 100) * per1000).toFixed(4)),
      writes,
      wallMs,
    }),
  );
} finally {
  await database.close();
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.end();
}
