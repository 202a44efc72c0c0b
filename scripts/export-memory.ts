/**
 * The memory an export holds: streams the archive of one user from an embedded node's data
 * directory (stopped; its PGlite database and `envelopes.db`) in this process, as the HTTP route
 * would, and prints the resident set size (MB) before, every 10 chunks and at its peak. With `--gc`
 * it forces a full collection after every chunk, so the figures are what the export keeps alive
 * (a page) rather than garbage the collector has not reclaimed yet. The export is audited in that
 * directory as an admin export.
 *
 *   bun run scripts/export-memory.ts <dataDir> <userId> [--gc]
 */
import { PostgresAuditTrail } from "../src/audit/service.ts";
import { loadConfig } from "../src/config/index.ts";
import { openDatabase } from "../src/db/index.ts";
import { ExportService } from "../src/gdpr/export.ts";
import { MemoryPresence } from "../src/messaging/memory-presence.ts";
import { SqliteEnvelopeLog } from "../src/messaging/sqlite-envelope-log.ts";

const [dataDir, userId, flag] = process.argv.slice(2);
if (!dataDir || !userId) {
  console.error("usage: bun run scripts/export-memory.ts <dataDir> <userId> [--gc]");
  process.exit(2);
}
const collect = flag === "--gc";
const database = await openDatabase({ dataDir });
const log = await SqliteEnvelopeLog.open(`${dataDir}/envelopes.db`);
const exports = new ExportService({
  db: database.db,
  log,
  presence: new MemoryPresence(),
  audit: new PostgresAuditTrail(database.db),
  config: loadConfig({ JWT_SECRET: "x".repeat(32) }),
});
const rssMb = () => Math.round(process.memoryUsage().rss / 1e6);
Bun.gc(true);
const before = rssMb();
let chunks = 0;
let bytes = 0;
let peak = before;
for await (const chunk of await exports.export(userId, "admin")) {
  chunks++;
  bytes += chunk.length;
  if (collect) Bun.gc(true);
  peak = Math.max(peak, rssMb());
  if (chunks % 10 === 0) console.log(JSON.stringify({ chunks, rssMb: rssMb() }));
}
console.log(JSON.stringify({ gcEveryChunk: collect, chunks, bytes, rssBeforeMb: before, rssPeakMb: peak }));
await log.close();
await database.close();
