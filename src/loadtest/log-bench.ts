/**
 * `npm run bench:log [-- --messages N --senders S]`: the embedded envelope log's access pattern on
 * each engine, through the EnvelopeLog port the server uses: S senders each append one envelope at
 * a time (so the group commit batches them), then ack them, then point reads per recipient; and
 * how long the event loop was blocked meanwhile (the longest gap of a 1 ms timer), since PGlite runs
 * on the server's own event loop. Prints rows/s per operation and the machine's load.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { openDatabase } from "../db/index.ts";
import type { StoredEnvelope } from "../messaging/envelope.ts";
import type { EnvelopeLog } from "../messaging/envelope-log.ts";
import { PostgresEnvelopeLog } from "../messaging/postgres-envelope-log.ts";
import { SqliteEnvelopeLog } from "../messaging/sqlite-envelope-log.ts";
import { exitOnHelp } from "./bench-usage.ts";

exitOnHelp(
  `usage: npm run bench:log [-- --messages N --senders S]\n\nThe embedded envelope log on each engine: N envelopes (at least 100, default 20000) appended by\nS senders (default 100), acked and read; rows/s per operation and the longest event-loop block.`,
);
const { values } = parseArgs({
  options: { messages: { type: "string", default: "20000" }, senders: { type: "string", default: "100" } },
});
const messages = Number(values.messages);
const senders = Number(values.senders);
if (!Number.isInteger(messages) || messages < 100 || !Number.isInteger(senders) || senders < 1) {
  console.error("bench:log: --messages (at least 100) and --senders (at least 1) are whole numbers");
  process.exit(2);
}

/**
 * Gaps between runs of a 1 ms timer: how long the event loop could not serve a socket. On a loaded
 * machine the operating system's scheduling shows up here too, for both engines alike.
 */
function loopWatch() {
  let last = performance.now();
  const gaps: number[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    gaps.push(now - last);
    last = now;
  }, 1);
  return () => {
    clearInterval(timer);
    gaps.push(performance.now() - last);
    gaps.sort((a, b) => a - b);
    const at = (q: number) => (gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))] ?? 0).toFixed(1);
    return `timer gaps p50 ${at(0.5)} / p99 ${at(0.99)} / max ${at(1)} ms over ${gaps.length} ticks`;
  };
}

async function measure(name: string, log: EnvelopeLog) {
  const recipients = Array.from({ length: senders }, () => randomUUID());
  const body = Buffer.alloc(100, 7).toString("base64");
  const sent: StoredEnvelope[][] = recipients.map(() => []);
  const perSender = Math.floor(messages / senders);
  const watch = loopWatch();
  let t = performance.now();
  await Promise.all(
    recipients.map(async (recipientUser, s) => {
      for (let i = 0; i < perSender; i++) {
        const e: StoredEnvelope = {
          id: randomUUID(),
          senderUser: recipients[(s + 1) % senders] as string,
          senderDevice: 1,
          recipientUser,
          recipientDevice: 1,
          groupId: null,
          ts: Date.now(),
          type: 1,
          body,
        };
        await log.append([e]);
        sent[s]?.push(e);
      }
    }),
  );
  const appendS = (performance.now() - t) / 1000;
  t = performance.now();
  await Promise.all(
    recipients.map(async (recipientUser, s) => {
      for (const e of sent[s] ?? []) await log.ack(recipientUser, 1, [e]);
    }),
  );
  const ackS = (performance.now() - t) / 1000;
  t = performance.now();
  const reads = 2000;
  for (let i = 0; i < reads; i++) await log.undelivered(recipients[i % senders] as string, { device: 1 });
  const readS = (performance.now() - t) / 1000;
  const blocked = watch();
  const total = perSender * senders;
  console.log(
    `${name}: append ${Math.round(total / appendS)}/s, ack ${Math.round(total / ackS)}/s, ` +
      `undelivered reads ${Math.round(reads / readS)}/s; event loop: ${blocked}`,
  );
}

console.log(
  `${messages} envelopes from ${senders} concurrent senders; load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
);
const dir = mkdtempSync(join(tmpdir(), "clearbox-log-bench-"));
try {
  const pglite = await openDatabase({ dataDir: join(dir, "pglite") });
  await measure("PGlite (PostgresEnvelopeLog)", new PostgresEnvelopeLog(pglite.db));
  await pglite.close();
  const sqlite = await SqliteEnvelopeLog.open(join(dir, "envelopes.db"));
  await measure("SQLite WAL, synchronous=FULL, writer thread (SqliteEnvelopeLog)", sqlite);
  await sqlite.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
