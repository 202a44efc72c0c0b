import { expect } from "bun:test";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";
import type { Traffic } from "./traffic.ts";

/**
 * Three nodes in this process on PostgreSQL at `databaseUrl`, Redis at `redisUrl` and the shared
 * RabbitMQ (the fault tests pass their own PostgreSQL or Redis for the service they kill), with
 * short heartbeats, resolving once every node sees the three on its ring.
 */
export async function startCluster(options: {
  databaseUrl: string;
  redisUrl?: string;
  env?: Record<string, string>;
}): Promise<TestNode[]> {
  const prefix = runPrefix();
  const env = {
    ...stackEnv("services", prefix),
    ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
    DEVICE_RATE_LIMIT: "100000",
    ...options.env,
  };
  const database = { url: options.databaseUrl, drop: async () => {} };
  const nodes: TestNode[] = [];
  try {
    for (const name of ["a", "b", "c"]) {
      nodes.push(
        await startTestNode("postgres", { database, env: { ...env, NODE_ID: `fault-${prefix}-${name}` } }),
      );
    }
    const until = Date.now() + 15_000;
    while (nodes.some((node) => node.actors.ringMembers().length < 3)) {
      if (Date.now() > until) throw new Error("the three nodes never saw each other");
      await Bun.sleep(50);
    }
    return nodes;
  } catch (error) {
    // The caller never gets the nodes that did start: they stop here, or they would run on (timers,
    // connections) into the files after this one.
    for (const node of nodes) await node.teardown().catch(() => undefined);
    throw error;
  }
}

/** Opens and closes a socket on every node: new WebSocket upgrades complete. */
export async function upgradesWork(nodes: TestNode[], token: string): Promise<void> {
  for (const node of nodes) {
    const socket = await TestSocket.open(node.url, token);
    socket.send({ type: "ping" });
    await socket.next((f) => f.type === "pong", 10_000, "pong");
    await socket.close();
  }
}

/** Every node still answers `/healthz`. */
export async function allAlive(nodes: TestNode[]): Promise<boolean> {
  const answers = await Promise.all(
    nodes.map((node) =>
      fetch(`${node.url}/healthz`)
        .then((res) => res.status === 200)
        .catch(() => false),
    ),
  );
  return answers.every(Boolean);
}

/** Lines of the nodes' logs at warn level or above (a failure message's context). */
export function warnings(nodes: TestNode[], limit = 40): string {
  return nodes
    .flatMap((node) => node.logs.filter((line) => /"level":(40|50|60)/.test(line)))
    .slice(-limit)
    .map((line) => line.slice(0, 300))
    .join("\n");
}

/**
 * Waits for `traffic` to settle, then checks the outcome every fault test wants: every send
 * answered, none rejected, every accepted message delivered once and in order per sender, no
 * socket closed, nothing unacked in the log or left in an offline queue, every node alive.
 */
export async function expectSettledClean(traffic: Traffic, nodes: TestNode[]): Promise<void> {
  const report = await traffic.settle();
  if (report.missing > 0 || report.outOfOrder.length > 0 || report.unanswered > 0)
    console.log(JSON.stringify(report), "\n", warnings(nodes));
  console.log(
    `sends ${report.sends}, accepted ${report.accepted}, retryable errors ${report.retryableErrors}, busy ${report.busy}, duplicates ${report.duplicates}`,
  );
  expect(report.unanswered).toBe(0);
  expect(report.rejected).toEqual([]);
  expect(report.missing).toBe(0);
  expect(report.outOfOrder).toEqual([]);
  expect(report.closedSockets).toEqual([]);
  expect(await traffic.unackedInLog()).toBe(0);
  expect(await traffic.leftInOfflineQueues()).toBe(0);
  expect(await allAlive(nodes)).toBe(true);
}
