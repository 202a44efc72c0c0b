/**
 * What one `GET /v1/me/export` costs a node whose caller has a backlog of queued messages: against
 * a running node at `url` (its `REGISTRATION` open and `DEVICE_RATE_LIMIT` at the default), makes
 * an account with two devices, sends `count` messages of `bytes` base64 characters from the first
 * device to the second (which never connects, so they stay queued), then asks for the export while
 * `/healthz` is polled every 5 ms beside it. `--export-only <username>` skips the sending and
 * exports an account made by an earlier run (its password is this script's).
 *
 *   bun run scripts/export-cost.ts <url> [count=1500] [bytes=150000]
 *   bun run scripts/export-cost.ts <url> --export-only <username>
 *
 * Output: the account's username, the archive's length and time, and the slowest `/healthz` answer
 * meanwhile (ms). For CPU-seconds, read the node's `/proc/<pid>/stat` before and after.
 */
const PASSWORD = "export-cost password";

async function call(url: string, method: string, path: string, body?: unknown, token?: string) {
  const response = await fetch(url + path, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json().catch(() => null)) as unknown };
}

async function login(url: string, username: string, device: { deviceId?: number; registrationId?: number }) {
  const session = await call(url, "POST", "/v1/sessions", { username, password: PASSWORD, ...device });
  if (session.status !== 201) throw new Error(`login: ${session.status} ${JSON.stringify(session.body)}`);
  return session.body as { userId: string; deviceId: number; accessToken: string };
}

/** Sends `count` messages of `bytes` base64 characters to the account's second, offline device. */
async function fill(url: string, count: number, bytes: number): Promise<string> {
  const username = `export_cost_${Math.random().toString(36).slice(2, 8)}`;
  const made = await call(url, "POST", "/v1/accounts", { username, password: PASSWORD });
  if (made.status !== 201) throw new Error(`register: ${made.status} ${JSON.stringify(made.body)}`);
  const sender = await login(url, username, { registrationId: 1 });
  const offline = await login(url, username, { registrationId: 2 });
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/v1/ws?token=${sender.accessToken}`);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let accepted = 0;
  ws.onmessage = (event) => {
    if (String(event.data).includes('"accepted"')) accepted++;
  };
  const body = Buffer.alloc(Math.floor((bytes * 3) / 4), 7).toString("base64");
  for (let i = 0; i < count; i++) {
    const messages = [{ deviceId: offline.deviceId, type: 3, body }];
    ws.send(JSON.stringify({ type: "send", id: crypto.randomUUID(), to: { user: sender.userId }, messages }));
    // Within the default DEVICE_RATE_LIMIT (100 frames a second, bursts of 200).
    if (i % 150 === 149) await Bun.sleep(1600);
  }
  while (accepted < count) await Bun.sleep(100);
  ws.close();
  return username;
}

async function exportOnce(url: string, username: string): Promise<void> {
  const { accessToken } = await login(url, username, { deviceId: 1 });
  let slowest = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const began = performance.now();
      await fetch(`${url}/healthz`);
      slowest = Math.max(slowest, performance.now() - began);
      await Bun.sleep(5);
    }
  })();
  const began = performance.now();
  const response = await fetch(`${url}/v1/me/export`, {
    headers: { authorization: `Bearer ${accessToken}` },
  });
  const text = await response.text();
  const ms = Math.round(performance.now() - began);
  polling = false;
  await poll;
  console.log(
    JSON.stringify({
      username,
      status: response.status,
      chars: text.length,
      ms,
      slowestHealthzMs: Math.round(slowest),
    }),
  );
}

const [url, second, third] = process.argv.slice(2);
if (!url) {
  console.error(
    "usage: bun run scripts/export-cost.ts <url> [count] [bytes] | <url> --export-only <username>",
  );
  process.exit(2);
}
const username =
  second === "--export-only" && third
    ? third
    : await fill(url, Number(second ?? 1500), Number(third ?? 150_000));
await exportOnce(url, username);
