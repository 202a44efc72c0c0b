/**
 * WebSocket connect/close churn against a running node, from this process: registers one account,
 * logs in `devices` devices, then each device opens and closes sockets in a loop until `attempts`
 * upgrades were tried. Prints the attempts, how many were refused (429 past the connect budget,
 * WS_CONNECTS_PER_DEVICE), attempts a second, and the node's CPU-seconds (user + system, read from
 * /proc/<pid>/stat) per 1,000 attempts, with the load average.
 *
 *   bun run scripts/ws-connect-churn.ts <port> <node pid> [attempts=3000] [devices=8]
 *
 * The node must take registrations and logins from 127.0.0.1 (the default budgets allow one run).
 */
import { readFileSync } from "node:fs";

const [port, pid, attemptsArg = "3000", devicesArg = "8"] = process.argv.slice(2);
if (!port || !pid) throw new Error("usage: ws-connect-churn.ts <port> <node pid> [attempts] [devices]");
const attempts = Number(attemptsArg);
const base = `http://127.0.0.1:${port}`;

/** The node's CPU-seconds so far (utime + stime, in clock ticks of 1/100 s). */
function nodeCpuSeconds(): number {
  const fields = (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function post(path: string, body: unknown): Promise<Response> {
  return fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

const username = `churn${Date.now() % 1e8}`;
const password = "correct horse battery staple";
const created = await post("/v1/accounts", { username, password });
if (created.status !== 201) throw new Error(`register: ${created.status}`);
const tokens: string[] = [];
for (let d = 0; d < Number(devicesArg); d++) {
  const session = await post("/v1/sessions", { username, password, registrationId: 100 + d });
  if (session.status !== 201) throw new Error(`login: ${session.status}`);
  tokens.push(((await session.json()) as { accessToken: string }).accessToken);
}

/** One upgrade, then a close; rejects when the upgrade is refused. */
async function cycle(token: string): Promise<void> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`, {
    headers: { authorization: `Bearer ${token}` },
  } as unknown as string[]);
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", reject, { once: true });
  });
  await new Promise<void>((resolve) => {
    ws.addEventListener("close", () => resolve(), { once: true });
    ws.close(1000);
  });
}

const loadBefore = readFileSync("/proc/loadavg", "utf8").trim();
const cpuBefore = nodeCpuSeconds();
const started = performance.now();
let tried = 0;
let refused = 0;
await Promise.all(
  tokens.map(async (token) => {
    while (tried < attempts) {
      tried++;
      await cycle(token).catch(() => refused++);
    }
  }),
);
const seconds = (performance.now() - started) / 1000;
await Bun.sleep(1000); // the close bookkeeping of the last sockets
console.log(
  JSON.stringify({
    attempts: tried,
    refused,
    perSecond: Math.round(tried / seconds),
    nodeCpuSecondsPer1000: Number((((nodeCpuSeconds() - cpuBefore) / tried) * 1000).toFixed(2)),
    loadBefore,
  }),
);
