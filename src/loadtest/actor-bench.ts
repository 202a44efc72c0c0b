// Actor runtime benchmark: `npm run bench:actors` (bun run src/loadtest/actor-bench.ts).
// Cross-node figures need Redis and RabbitMQ (REDIS_URL / AMQP_URL, local defaults); they are
// skipped with a note when unreachable. Figures go to docs/BENCHMARKS.md by hand.
import { randomUUID } from "node:crypto";
import { connect } from "amqplib";
import { Redis } from "ioredis";
import { type ActorSystem, createActorNode, MailboxFullError, Ring } from "../../actors/index.ts";
import { exitOnHelp } from "./bench-usage.ts";

exitOnHelp(
  "usage: npm run bench:actors\n\nActor runtime benchmark: local actors, the ring and, with Redis and RabbitMQ (REDIS_URL, AMQP_URL;\nlocal defaults), cross-node tells and asks. No options.",
);

const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

function rate(count: number, ms: number): string {
  return `${Math.round((count / ms) * 1000).toLocaleString("en-US")} msg/s`;
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 1));
}

/** Tells with backpressure: on a full mailbox, yield and retry. */
async function tellPatiently(system: ActorSystem, key: string, message: unknown): Promise<void> {
  for (;;) {
    try {
      await system.tell(key, message);
      return;
    } catch (error) {
      if (!(error instanceof MailboxFullError)) throw error;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

async function localThroughput(): Promise<void> {
  let processed = 0;
  const system = createActorNode({ nodeId: "bench", idleTimeoutMs: 0 });
  system.register("sink", () => ({
    receive() {
      processed++;
    },
  }));
  await system.start();

  const one = 2_000_000;
  let started = performance.now();
  for (let i = 0; i < one; i++) await tellPatiently(system, "sink:1", i);
  await until(() => processed >= one);
  console.log(
    `local, one actor:        ${rate(one, performance.now() - started)} (${one.toLocaleString()} tells)`,
  );

  processed = 0;
  const actors = 10_000;
  const perActor = 100;
  started = performance.now();
  for (let round = 0; round < perActor; round++) {
    for (let a = 0; a < actors; a++) await tellPatiently(system, `sink:${a}`, round);
  }
  await until(() => processed >= actors * perActor);
  console.log(
    `local, 10k actors:       ${rate(actors * perActor, performance.now() - started)} (${(actors * perActor).toLocaleString()} tells)`,
  );

  const askCount = 200_000;
  started = performance.now();
  const window: Promise<unknown>[] = [];
  for (let i = 0; i < askCount; i++) {
    window.push(system.ask(`sink:${i % 1000}`, i));
    if (window.length >= 1000) await Promise.all(window.splice(0));
  }
  await Promise.all(window);
  console.log(`local ask round trips:   ${rate(askCount, performance.now() - started)}`);
  await system.stop();
}

async function idleActorMemory(): Promise<void> {
  const system = createActorNode({ nodeId: "mem", idleTimeoutMs: 0 });
  system.register("idle", () => ({ receive() {} }));
  await system.start();
  const count = 200_000;
  Bun.gc(true);
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < count; i++) await system.tell(`idle:${i}`, 0);
  await until(() => system.stats().processed >= count);
  await new Promise((resolve) => setTimeout(resolve, 50));
  Bun.gc(true);
  const after = process.memoryUsage().heapUsed;
  console.log(
    `memory per idle actor:   ${Math.round((after - before) / count)} bytes (heap delta over ${count.toLocaleString()} actors, key string included)`,
  );
  await system.stop();
}

function ringLookup(): void {
  for (const members of [3, 30]) {
    const ring = new Ring(Array.from({ length: members }, (_, i) => `node-${i}`));
    const keys = Array.from({ length: 100_000 }, (_, i) => `user:${randomUUID()}-${i}`);
    let sink = 0;
    const rounds = 20;
    const started = performance.now();
    for (let r = 0; r < rounds; r++) for (const key of keys) if (ring.ownerOf(key) === "node-0") sink++;
    const ns = ((performance.now() - started) * 1e6) / (rounds * keys.length);
    const buildStart = performance.now();
    new Ring(ring.members);
    console.log(
      `ring lookup, ${members} members:  ${ns.toFixed(0)} ns/lookup (${ring.size} vnodes; build ${(performance.now() - buildStart).toFixed(1)} ms) ${sink > 0 ? "" : "!"}`,
    );
  }
}

async function servicesReachable(): Promise<boolean> {
  try {
    const redis = new Redis(REDIS_URL, {
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    await redis.connect();
    await redis.quit();
    const amqp = await connect(AMQP_URL);
    await amqp.close();
    return true;
  } catch {
    return false;
  }
}

async function crossNode(): Promise<void> {
  if (!(await servicesReachable())) {
    console.log("cross-node: skipped, Redis or RabbitMQ unreachable");
    return;
  }
  const prefix = `cbbench-${randomUUID().slice(0, 8)}`;
  let processed = 0;
  const nodes: ActorSystem[] = [];
  for (const nodeId of ["bench-a", "bench-b"]) {
    const node = createActorNode({
      nodeId,
      redisUrl: REDIS_URL,
      amqpUrl: AMQP_URL,
      prefix,
      heartbeatMs: 500,
      ttlMs: 2000,
      idleTimeoutMs: 0,
    });
    node.register("sink", () => ({
      receive() {
        processed++;
        return 1;
      },
    }));
    await node.start();
    nodes.push(node);
  }
  const [a] = nodes;
  while (a.ringMembers().length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
  const remoteKeys = Array.from({ length: 5000 }, (_, i) => `sink:${i}`).filter(
    (k) => a.ownerOf(k) === "bench-b",
  );

  const count = 200_000;
  let started = performance.now();
  const window: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    window.push(a.tell(remoteKeys[i % remoteKeys.length], i));
    if (window.length >= 5000) await Promise.all(window.splice(0));
  }
  await Promise.all(window);
  await until(() => processed >= count);
  console.log(
    `cross-node tell:         ${rate(count, performance.now() - started)} (confirmed by RabbitMQ, processed on the peer)`,
  );

  const asks = 50_000;
  started = performance.now();
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < asks; i++) {
    pending.push(a.ask(remoteKeys[i % remoteKeys.length], i));
    if (pending.length >= 2000) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  console.log(
    `cross-node ask:          ${rate(asks, performance.now() - started)} (request and reply both through RabbitMQ)`,
  );

  started = performance.now();
  const latencyRounds = 500;
  for (let i = 0; i < latencyRounds; i++) await a.ask(remoteKeys[i % remoteKeys.length], i);
  console.log(
    `cross-node ask latency:  ${((performance.now() - started) / latencyRounds).toFixed(2)} ms (sequential)`,
  );

  const fanKeys = remoteKeys.slice(0, 1000);
  const fanRounds = 100;
  processed = 0;
  started = performance.now();
  for (let i = 0; i < fanRounds; i++) await a.tellMany(fanKeys, i);
  await until(() => processed >= fanRounds * fanKeys.length);
  console.log(
    `cross-node tellMany:     ${rate(fanRounds * fanKeys.length, performance.now() - started)} (fan-out to 1000 actors, one transfer per node)`,
  );

  for (const node of nodes) await node.stop();
  const redis = new Redis(REDIS_URL);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
}

console.log(`actor runtime benchmark, bun ${Bun.version}, ${navigator.hardwareConcurrency} cores\n`);
await localThroughput();
await idleActorMemory();
ringLookup();
await crossNode();
process.exit(0);
