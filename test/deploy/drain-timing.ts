// Manual measurement for docs/BENCHMARKS.md ("Drain and stop"), not part of `npm test`:
//   npx bun test/deploy/drain-timing.ts <devices>
// Two nodes on PostgreSQL + Redis + RabbitMQ; <devices> users connected to node b; times
// `POST /admin/v1/nodes/b/drain?wait=true` (the Kubernetes pre-stop hook) and then b's stop().
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode } from "../support/node.ts";
import { createTestDatabase } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

const n = Number(process.argv[2] ?? 1000);
const prefix = runPrefix();
const database = await createTestDatabase();
const env = { ...stackEnv("services", prefix), LOG_LEVEL: "warn" };
const a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-a` } });
const b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: `${prefix}-b` } });
while (a.actors.ringMembers().length < 2) await Bun.sleep(20);
const client = api(b.url);
const sockets: TestSocket[] = [];
for (let i = 0; i < n; i += 50) {
  const users = await Promise.all(
    Array.from({ length: Math.min(50, n - i) }, () => registerAndLogin(client)),
  );
  sockets.push(...(await Promise.all(users.map((u) => TestSocket.open(b.url, u.accessToken)))));
}
await Bun.sleep(2000);
const keys = (node: typeof a) => node.actors.activeKeys().filter((k) => k.startsWith("user:")).length;
console.log(
  `connected ${sockets.length} on b; user actors a=${keys(a)} b=${keys(b)}; uptime ${(await Bun.file("/proc/loadavg").text()).trim()}`,
);
let t = performance.now();
const r = await fetch(`${b.adminUrl}/admin/v1/nodes/${b.config.nodeId}/drain?wait=true`, {
  method: "POST",
  headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
});
console.log(
  `drain?wait=true: ${r.status} in ${Math.round(performance.now() - t)} ms; user actors a=${keys(a)} b=${keys(b)}`,
);
t = performance.now();
await b.stop();
console.log(`stop() after drain with ${sockets.length} sockets: ${Math.round(performance.now() - t)} ms`);
for (const s of sockets) s.close();
await a.teardown();
await database.drop();
process.exit(0);
