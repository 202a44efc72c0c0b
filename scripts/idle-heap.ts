/**
 * What an idle WebSocket connection keeps on the server's JS heap, by object type: starts one
 * ClearBox node in this process on the services stack (a database, Redis prefix and RabbitMQ
 * prefix of its own, as the load harness's `--stack services`), creates N users, opens one socket
 * each from a child process (so the clients' objects are not on this heap), and compares
 * `bun:jsc` `heapStats()` after a full collection before and after. Also prints RSS.
 *
 *   bun run scripts/idle-heap.ts [N=3000]
 *
 * Output: JSON with heap bytes and objects per socket, the object types (`heapStats`) and class
 * names (a heap snapshot's) that grew most (count per socket), and RSS before/after (bytes per socket). The run's database, keys and queues are removed.
 */
import { heapStats } from "bun:jsc";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { loadConfig } from "../src/config/index.ts";
import { prepareStack } from "../src/loadtest/servers.ts";
import { clearboxTarget } from "../src/loadtest/targets.ts";
import { createNode } from "../src/node.ts";
import { createLogger } from "../src/observability/logger.ts";

const n = Number(process.argv[2] ?? 3000);

if (process.argv[2] === "--client") {
  // Child: open one socket per line of the file, report "open", stay until stdin closes.
  const devices = JSON.parse(await Bun.file(process.argv[3] as string).text()) as {
    url: string;
    token: string;
  }[];
  const sockets: WebSocket[] = [];
  for (let i = 0; i < devices.length; i += 100) {
    await Promise.all(
      devices.slice(i, i + 100).map(
        (d) =>
          new Promise<void>((resolve, reject) => {
            const ws = new WebSocket(d.url, {
              headers: { authorization: `Bearer ${d.token}` },
            } as unknown as string[]);
            ws.addEventListener("open", () => resolve(), { once: true });
            ws.addEventListener("error", () => reject(new Error("refused")), { once: true });
            sockets.push(ws);
          }),
      ),
    );
  }
  console.log("open");
  for await (const _ of Bun.stdin.stream()) {
    // keep open until the parent closes stdin
  }
  for (const ws of sockets) ws.close();
  process.exit(0);
}

/**
 * Live objects by class name (`DeviceConnection`, `UserActor`, `Promise`, `string`...) from a JSC
 * heap snapshot (`Bun.generateHeapSnapshot()`: nodes are [id, size, class name index, flags]).
 */
function classCounts(): Record<string, number> {
  const snap = Bun.generateHeapSnapshot() as unknown as { nodes: number[]; nodeClassNames: string[] };
  const counts: Record<string, number> = {};
  for (let i = 0; i < snap.nodes.length; i += 4) {
    const name = snap.nodeClassNames[snap.nodes[i + 2] as number] ?? "?";
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

function snapshot() {
  Bun.gc(true);
  Bun.gc(true);
  const s = heapStats();
  return {
    heapSize: s.heapSize,
    objectCount: s.objectCount,
    types: { ...s.objectTypeCounts },
    classes: classCounts(),
    rss: process.memoryUsage().rss,
  };
}

const stack = await prepareStack("services");
const dataDir = mkdtempSync(join(tmpdir(), "clearbox-heap-"));
const config = loadConfig({
  NODE_ENV: "development",
  PORT: "0",
  ADMIN_PORT: "0",
  ADMIN_TOKEN: "heap-probe-admin-token-0123456789",
  DATA_DIR: dataDir,
  LOG_LEVEL: "warn",
  JWT_SECRET: "heap-probe-jwt-secret-that-is-long-enough-0123",
  DEVICE_RATE_LIMIT: "1000000",
  PASSWORD_HASH_MEMORY_KIB: "1024",
  PASSWORD_HASH_TIME_COST: "1",
  LOGIN_ATTEMPTS_PER_ADDRESS: "100000000",
  REGISTRATIONS_PER_ADDRESS: "100000000",
  ...stack.env,
});
const logger = createLogger({
  level: "warn",
  nodeId: config.nodeId,
  format: config.logFormat,
  destination: new Writable({ write: (_c, _e, done) => done() }),
});
const node = await createNode(config, { logger });
const file = join(dataDir, "devices.json");
try {
  const target = clearboxTarget([node.url], 32);
  const devices = await target.createUsers(n, () => {});
  writeFileSync(
    file,
    JSON.stringify(
      devices.map((d) => {
        const s = target.socket(d);
        return { url: s.url, token: (s.headers?.authorization ?? "").replace(/^Bearer /, "") };
      }),
    ),
  );
  await Bun.sleep(1000);
  const before = snapshot();
  const child = Bun.spawn([process.execPath, "run", import.meta.path, "--client", file], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
  });
  const reader = child.stdout.getReader();
  let out = "";
  while (!out.includes("open")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("client ended before its sockets opened");
    out += new TextDecoder().decode(value);
  }
  // Every socket registered, then time for each to go live (drain, device.drained) before collecting.
  const deadline = Date.now() + 60_000;
  while (node.gateway.connections < n && Date.now() < deadline) await Bun.sleep(200);
  await Bun.sleep(5000);
  const after = snapshot();
  const grown = Object.entries(after.types)
    .map(([type, count]) => [type, count - (before.types[type] ?? 0)] as const)
    .filter(([, d]) => d >= n / 2)
    .sort((a, b) => b[1] - a[1])
    .map(([type, d]) => `${type} ${(d / n).toFixed(2)}`);
  const grownClasses = Object.entries(after.classes)
    .map(([name, count]) => [name, count - (before.classes[name] ?? 0)] as const)
    .filter(([, d]) => d >= n / 2)
    .sort((a, b) => b[1] - a[1])
    .map(([name, d]) => `${name} ${(d / n).toFixed(2)}`);
  console.log(
    JSON.stringify(
      {
        sockets: n,
        connections: node.gateway.connections,
        heapBytesPerSocket: Math.round((after.heapSize - before.heapSize) / n),
        objectsPerSocket: Math.round(((after.objectCount - before.objectCount) / n) * 10) / 10,
        rssBytesPerSocket: Math.round((after.rss - before.rss) / n),
        rssMb: [Math.round(before.rss / 1048576), Math.round(after.rss / 1048576)],
        grownTypesPerSocket: grown,
        grownClassesPerSocket: grownClasses,
      },
      null,
      2,
    ),
  );
  child.stdin.end();
  await child.exited;
} finally {
  await node.stop();
  await stack.cleanup();
  rmSync(dataDir, { recursive: true, force: true });
}
