import { afterAll, expect, test } from "bun:test";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN } from "../support/node.ts";
import {
  removeScratchDataDirs,
  type SpawnedNode,
  scratchDataDir,
  spawnNodeProcess,
} from "../support/process.ts";
import { ackOf, type Frame, TestSocket, waitUntil } from "../support/ws.ts";

// kill -9 of an embedded node (the default: PGlite and the SQLite log in DATA_DIR) in the middle of
// a burst of sends to an offline recipient, then a restart on the same DATA_DIR: every send that
// was answered `accepted` reaches the recipient, once, in the order sent.
const spawned: SpawnedNode[] = [];

afterAll(async () => {
  for (const node of spawned) {
    node.proc.kill(9);
    await node.proc.exited;
  }
  removeScratchDataDirs();
});

function nodeEnv(dataDir: string): Record<string, string | undefined> {
  return {
    ...process.env,
    DATABASE_URL: undefined,
    REDIS_URL: undefined,
    AMQP_URL: undefined,
    MONGODB_URL: undefined,
    DATA_DIR: dataDir,
    PORT: "0",
    ADMIN_PORT: "0",
    NODE_ENV: "test",
    LOG_LEVEL: "info",
    ADMIN_TOKEN,
    PASSWORD_HASH_MEMORY_KIB: "1024",
    PASSWORD_HASH_TIME_COST: "1",
    DEVICE_RATE_LIMIT: "100000",
  };
}

test("embedded node killed -9 mid-burst and restarted: every accepted message delivered once, in order", async () => {
  const dataDir = scratchDataDir();
  const first = await spawnNodeProcess(nodeEnv(dataDir));
  spawned.push(first);
  const http = api(first.url);
  const alice = await registerAndLogin(http);
  const bob = await registerAndLogin(http);
  const sender = await TestSocket.open(first.url, alice.accessToken);
  const ids: string[] = Array.from({ length: 2000 }, () => crypto.randomUUID());
  const accepted = new Set<string>();
  sender.ws.addEventListener("message", (event) => {
    const frame = JSON.parse(String(event.data)) as Frame;
    if (frame.type === "accepted") accepted.add(frame.id as string);
    // Killed from the listener, as the 50th answer arrives: the burst is still being taken in.
    if (accepted.size === 50) first.proc.kill(9);
  });
  for (const [i, id] of ids.entries()) {
    sender.send({
      type: "send",
      id,
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body: Buffer.from(`m ${i}`).toString("base64") }],
    });
  }
  await first.proc.exited;
  const acceptedIds = ids.filter((id) => accepted.has(id));
  console.log(`accepted before the kill: ${acceptedIds.length} of ${ids.length}`);

  const second = await spawnNodeProcess(nodeEnv(dataDir));
  spawned.push(second);
  const inbox = await TestSocket.open(second.url, bob.accessToken);
  const received: string[] = [];
  const seen = new Set<string>();
  await waitUntil(
    async () => {
      for (const frame of inbox.frames.splice(0)) {
        if (frame.type !== "message") continue;
        received.push(frame.id as string);
        seen.add(frame.id as string);
        inbox.send(ackOf([frame]));
      }
      return acceptedIds.every((id) => seen.has(id));
    },
    () => `every accepted message (${seen.size} distinct of ${acceptedIds.length} accepted so far)`,
    60_000,
  );
  // Anything still coming (sends committed but not yet answered may arrive too) comes in meanwhile.
  await Bun.sleep(1000);
  for (const frame of inbox.frames.splice(0)) if (frame.type === "message") received.push(frame.id as string);
  const duplicates = received.filter((id, i) => received.indexOf(id) !== i);
  expect(duplicates).toEqual([]);
  const order = received.map((id) => ids.indexOf(id));
  expect(order.every((index, i) => i === 0 || index > (order[i - 1] as number))).toBe(true);
  expect(received.filter((id) => !ids.includes(id))).toEqual([]);
  await inbox.close();
  await sender.close().catch(() => undefined);
}, 180_000);
