/**
 * What a flood of malformed WebSocket frames costs a node: spawns one node (`src/main.ts`) at the
 * production DEVICE_RATE_LIMIT (100/s), signs one user in, sends `--frames` (default 2,000)
 * unparseable text frames of `--kib` (default 200) KiB back to back on one socket, waits for every
 * answer, and prints the answers by code and the node's CPU seconds (utime+stime of
 * `/proc/<pid>/stat`) over the flood, as one JSON line. Linux only. docs/BENCHMARKS.md,
 * "Malformed frames charged before parsing".
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { spawnNode } from "../src/loadtest/servers.ts";

const { values } = parseArgs({ options: { frames: { type: "string" }, kib: { type: "string" } } });
const frames = Number(values.frames ?? 2000);
const kib = Number(values.kib ?? 200);

/** utime + stime of a process, seconds (clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const node = await spawnNode({ DEVICE_RATE_LIMIT: "100" }, 0);
try {
  const username = `flood${Date.now()}`;
  const password = "correct horse battery";
  const post = (path: string, body: unknown) =>
    fetch(`${node.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }).then((r) => r.json() as Promise<{ accessToken?: string }>);
  await post("/v1/accounts", { username, password });
  const { accessToken } = await post("/v1/sessions", { username, password, registrationId: 7 });
  const url = new URL("/v1/ws", node.url.replace(/^http/, "ws"));
  url.searchParams.set("token", String(accessToken));
  const ws = new WebSocket(url.href);
  await new Promise((opened) => ws.addEventListener("open", opened, { once: true }));
  const answers: Record<string, number> = {};
  let answered = 0;
  const allAnswered = new Promise<void>((done) => {
    ws.addEventListener("message", (event) => {
      const frame = JSON.parse(String(event.data)) as { type: string; code?: string };
      if (frame.type !== "error") return;
      answers[String(frame.code)] = (answers[String(frame.code)] ?? 0) + 1;
      if (++answered === frames) done();
    });
  });
  const garbage = `{${"x".repeat(kib * 1024)}`;
  const before = cpuSeconds(node.pid);
  for (let i = 0; i < frames; i++) ws.send(garbage);
  await allAnswered;
  const nodeCpuSeconds = cpuSeconds(node.pid) - before;
  console.log(
    JSON.stringify({
      frames,
      kib,
      answers,
      nodeCpuSeconds: Number(nodeCpuSeconds.toFixed(2)),
      cpuMsPerFrame: Number(((nodeCpuSeconds * 1000) / frames).toFixed(3)),
    }),
  );
  ws.close();
} finally {
  await node.stop();
}
