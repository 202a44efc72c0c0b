/**
 * Cost per unit of work, measured on this machine against the real services: the measured rows of
 * docs/SCALING.md. Run: `npm run bench:costs` (options below). Uses AMQP_URL, REDIS_URL,
 * LOADTEST_POSTGRES_URL (an admin connection: a database of its own is created and dropped) and,
 * for the broker's memory, `rabbitmq-diagnostics` on this machine (RABBITMQ_NODE names another
 * node). Everything it creates is under a random prefix and removed at the end.
 *
 * The broker and Redis are shared with whatever else runs: memory deltas are taken around each
 * step, and the broker's are noisy (its allocator moves by megabytes on its own), so use enough
 * units for the delta to dominate.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { connect } from "amqplib";
import Redis from "ioredis";
import postgres from "postgres";
import { openDatabase, rowsOf } from "../db/index.ts";
import { AmqpOfflineQueue } from "../messaging/amqp-offline-queue.ts";
import type { StoredEnvelope } from "../messaging/envelope.ts";
import { PostgresEnvelopeLog } from "../messaging/postgres-envelope-log.ts";
import { RedisPresence } from "../messaging/redis-presence.ts";
import { deleteMatching, globLiteral } from "../redis/delete-matching.ts";
import { exitOnHelp } from "./bench-usage.ts";
import { brokerMemory } from "./broker.ts";

const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const POSTGRES_URL = process.env.LOADTEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

exitOnHelp(
  `usage: npm run bench:costs [-- --queues N --messages N --rows N --group-size N --group-messages N\n                              --leases N --members N --size BYTES --json]\n\nCost per unit of work against AMQP_URL, REDIS_URL and LOADTEST_POSTGRES_URL (docs/SCALING.md);\neverything it creates is under a random prefix and removed at the end.`,
);
const { values } = parseArgs({
  options: {
    queues: { type: "string", default: "2000" },
    messages: { type: "string", default: "20000" },
    rows: { type: "string", default: "20000" },
    "group-size": { type: "string", default: "100" },
    "group-messages": { type: "string", default: "50" },
    leases: { type: "string", default: "5000" },
    members: { type: "string", default: "50" },
    /** Ciphertext bytes per envelope (before base64): a short Signal message is ~100–200. */
    size: { type: "string", default: "160" },
    json: { type: "boolean", default: false },
  },
});
const n = (key: keyof typeof values) => Number(values[key]);

/** One measured row: what, the figure, its unit, and how it was obtained. */
interface Row {
  what: string;
  value: number;
  unit: string;
  how: string;
}
const rows: Row[] = [];
function record(what: string, value: number, unit: string, how: string): void {
  rows.push({ what, value: Math.round(value * 100) / 100, unit, how });
  if (!values.json) console.error(`${what}: ${Math.round(value * 100) / 100} ${unit}  (${how})`);
}

const prefix = `cb_cost_${randomBytes(4).toString("hex")}`;

function envelope(
  recipientUser: string,
  recipientDevice: number,
  groupId: string | null = null,
): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser,
    recipientDevice,
    groupId,
    ts: Date.now(),
    type: 3,
    body: randomBytes(n("size")).toString("base64"),
  };
}

/** Broker memory, read twice a second apart and averaged (the allocator moves on its own). */
async function settledBrokerMemory() {
  await Bun.sleep(1500);
  const a = await brokerMemory();
  await Bun.sleep(1000);
  const b = await brokerMemory();
  return {
    totalBytes: (a.totalBytes + b.totalBytes) / 2,
    queueProcsBytes: (a.queueProcsBytes + b.queueProcsBytes) / 2,
  };
}

async function broker(): Promise<void> {
  const queueCount = n("queues");
  const connection = await connect(AMQP_URL);
  const channel = await connection.createChannel();
  const names = Array.from({ length: queueCount }, () => `${prefix}.dev.${randomUUID()}.1`);
  const queue = await AmqpOfflineQueue.open(AMQP_URL, { prefix, retentionDays: 30 });
  try {
    const before = await settledBrokerMemory();
    const t0 = performance.now();
    for (const name of names) {
      // The arguments AmqpOfflineQueue declares with (30 days of retention).
      await channel.assertQueue(name, {
        durable: true,
        arguments: {
          "x-queue-type": "classic",
          "x-message-ttl": 30 * 86_400_000,
          "x-expires": 30 * 86_400_000,
        },
      });
    }
    const declareMs = (performance.now() - t0) / queueCount;
    const idle = await settledBrokerMemory();
    record(
      "broker memory per idle offline queue",
      (idle.queueProcsBytes - before.queueProcsBytes) / queueCount,
      "bytes (queue processes)",
      `${queueCount} durable classic queues declared, rabbitmq-diagnostics memory_breakdown queue_procs delta`,
    );
    record(
      "broker memory per idle offline queue, whole node",
      (idle.totalBytes - before.totalBytes) / queueCount,
      "bytes (all parts)",
      "same run, sum of memory_breakdown delta",
    );
    record(
      "time to declare an offline queue",
      declareMs,
      "ms",
      "assertQueue one after another on one channel",
    );

    // Messages: spread over a tenth of the queues, through the real flush (persistent, confirmed).
    const messageCount = n("messages");
    const targets = names.slice(0, Math.max(1, Math.floor(queueCount / 10)));
    const perQueue = Math.ceil(messageCount / targets.length);
    const t1 = performance.now();
    for (let i = 0; i < targets.length; i += 50) {
      await Promise.all(
        targets.slice(i, i + 50).map((name) => {
          const userId = name.split(".")[2] as string;
          return queue.flush(
            userId,
            1,
            Array.from({ length: perQueue }, () => envelope(userId, 1)),
          );
        }),
      );
    }
    const flushMs = performance.now() - t1;
    const full = await settledBrokerMemory();
    const sent = perQueue * targets.length;
    record(
      "broker memory per queued message",
      (full.totalBytes - idle.totalBytes) / sent,
      "bytes (all parts)",
      `${sent} persistent messages of ${n("size")} B ciphertext (${Buffer.byteLength(JSON.stringify(envelope(randomUUID(), 1)))} B JSON) in ${targets.length} queues, memory_breakdown delta`,
    );
    record(
      "offline flush throughput",
      sent / (flushMs / 1000),
      "messages/s",
      "AmqpOfflineQueue.flush, 50 queues at once, confirms",
    );
  } finally {
    for (let i = 0; i < names.length; i += 500) {
      await Promise.all(names.slice(i, i + 500).map((name) => channel.deleteQueue(name)));
    }
    await queue.close();
    await connection.close();
  }
}

async function postgresCosts(): Promise<void> {
  const name = prefix;
  const admin = postgres(POSTGRES_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  const url = new URL(POSTGRES_URL);
  url.pathname = `/${name}`;
  const database = await openDatabase({ databaseUrl: url.toString(), dataDir: null });
  try {
    const log = new PostgresEnvelopeLog(database.db);
    const size = async () =>
      Number(
        rowsOf<{ bytes: string }>(
          await database.db.execute("select pg_total_relation_size('envelopes') as bytes" as never),
        )[0]?.bytes,
      );
    // Warm up (the first insert creates the files), then measure.
    await log.append([envelope(randomUUID(), 1)]);
    const empty = await size();
    const rowCount = n("rows");
    const recipients = Array.from({ length: 1000 }, () => randomUUID());
    const t0 = performance.now();
    // As the gateway submits them: many appends in flight, gathered by the group commit.
    const pending: Promise<boolean[]>[] = [];
    for (let i = 0; i < rowCount; i++) {
      pending.push(log.append([envelope(recipients[i % recipients.length] as string, 1)]));
      if (pending.length >= 256) await Promise.all(pending.splice(0));
    }
    await Promise.all(pending);
    const bulkMs = performance.now() - t0;
    const full = await size();
    record(
      "PostgreSQL bytes per envelope row",
      (full - empty) / rowCount,
      "bytes (table + indexes)",
      `${rowCount} 1:1 rows of ${n("size")} B ciphertext, pg_total_relation_size delta`,
    );
    record(
      "PostgreSQL write time per envelope row, group-committed",
      bulkMs / rowCount,
      "ms",
      "appends 256 in flight (group commit), wall time / rows",
    );
    const singles: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t = performance.now();
      await log.append([envelope(recipients[i] as string, 1)]);
      singles.push(performance.now() - t);
    }
    singles.sort((a, b) => a - b);
    record(
      "PostgreSQL append latency, one envelope alone",
      singles[Math.floor(singles.length / 2)] as number,
      "ms (p50)",
      "200 appends one after another (one commit each)",
    );
    const groupSize = n("group-size");
    const groupMessages = n("group-messages");
    const members = Array.from({ length: groupSize }, () => randomUUID());
    const beforeGroups = await size();
    const t1 = performance.now();
    for (let m = 0; m < groupMessages; m++) {
      const base = envelope(randomUUID(), 1, randomUUID());
      await log.append(members.map((u) => ({ ...base, recipientUser: u })));
    }
    const groupMs = (performance.now() - t1) / groupMessages;
    const afterGroups = await size();
    record(
      `PostgreSQL bytes per group message (${groupSize} member devices)`,
      (afterGroups - beforeGroups) / groupMessages,
      "bytes",
      "one row per member device, pg_total_relation_size delta",
    );
    record(
      `PostgreSQL write time per group message (${groupSize} member devices)`,
      groupMs,
      "ms",
      `${groupMessages} group sends one after another (one multi-row INSERT each)`,
    );
  } finally {
    await database.close();
    await admin.unsafe(`drop database if exists ${name} with (force)`);
    await admin.end();
  }
}

async function redisCosts(): Promise<void> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 2 });
  const keyPrefix = `${prefix}:`;
  const usage = async (pattern: string) => {
    let total = 0;
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(
        cursor,
        "MATCH",
        `${globLiteral(keyPrefix)}${pattern}`,
        "COUNT",
        1000,
      );
      cursor = next;
      for (const key of keys) total += Number(await redis.memory("USAGE", key)) || 0;
    } while (cursor !== "0");
    return total;
  };
  try {
    const presence = new RedisPresence(redis, keyPrefix, 60_000);
    const leases = n("leases");
    const sockets = Array.from({ length: leases }, () => ({
      userId: randomUUID(),
      deviceId: 1,
      nodeId: "node-a",
      connectionId: randomUUID(),
    }));
    for (let i = 0; i < sockets.length; i += 500) await presence.connected(sockets.slice(i, i + 500));
    record(
      "Redis memory per presence lease (one device online)",
      (await usage("presence:*")) / leases,
      "bytes",
      `${leases} users with one lease each, MEMORY USAGE of their lease sorted sets`,
    );
    record(
      "Redis memory per last-seen time",
      (await usage("lastseen:*")) / leases,
      "bytes",
      "MEMORY USAGE of the lastseen keys (kept until erasure)",
    );
    // Ring members: the key and set entry a RedisMembership keeps per node.
    const { RedisMembership } = await import("../../actors/redis-membership.ts");
    const members = n("members");
    const joined = [];
    for (let i = 0; i < members; i++) {
      const m = new RedisMembership({
        nodeId: `node-${i}`,
        redis,
        prefix: `${keyPrefix}cluster`,
        heartbeatMs: 60_000,
      });
      await m.join({ address: `node-${i}` }, () => ({ actors: 0, connections: 0 }));
      joined.push(m);
    }
    record(
      "Redis memory per ring member",
      ((await usage("cluster:member:*")) + (await usage("cluster:nodes"))) / members,
      "bytes",
      `${members} members joined, MEMORY USAGE of member keys and the nodes set`,
    );
    for (const m of joined) await m.leave().catch(() => {});
  } finally {
    await deleteMatching(redis, `${globLiteral(keyPrefix)}*`);
    redis.disconnect();
  }
}

const load = loadavg()
  .map((l) => l.toFixed(2))
  .join(" ");
if (!values.json) console.error(`unit costs, prefix ${prefix}, load average ${load}`);
await broker();
await postgresCosts();
await redisCosts();
if (values.json) console.log(JSON.stringify({ load, rows }));
else {
  console.log("| what | figure | unit | how |\n| --- | --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.what} | ${r.value.toLocaleString("en")} | ${r.unit} | ${r.how} |`);
}
