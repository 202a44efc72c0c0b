import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { userKey } from "../../actors/index.ts";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import type { AmqpOfflineQueue } from "../../src/messaging/amqp-offline-queue.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import {
  removeScratchDataDirs,
  type SpawnedNode,
  scratchDataDir,
  spawnNodeProcess,
} from "../support/process.ts";
import { sendDirect, TestSocket, waitUntil } from "../support/ws.ts";

/** A ClearBox node in a process of its own, so the test can stop and kill -9 it. */
function spawnNode(env: Record<string, string>): Promise<SpawnedNode> {
  return spawnNodeProcess({
    ...process.env,
    ...env,
    DATA_DIR: scratchDataDir(),
    NODE_ID: `victim-${randomUUID().slice(0, 6)}`,
    PORT: "0",
    ADMIN_PORT: "0",
    LOG_LEVEL: "info",
    NODE_ENV: "test",
  });
}

/**
 * The old socket's node dies instead of ending its drain: its socket took the device's five queued
 * messages (not acked), the device connected to node A meanwhile and A's socket read the queue
 * while they were held, then the old node is killed (-9) and RabbitMQ gives them back with no
 * `device.disconnect` (and no requeued count) ever sent. A's socket is live: it must still get them
 * without the device connecting again (docs/MESSAGING.md: a live socket does not stay live while
 * its envelopes wait in the queue). Node A learns from the membership that the old node went away
 * (`ActorSystem.onNodesGone`), and its socket, which found the old one's lease when it came online,
 * reads the queue again.
 */
describe("the node holding a replaced socket's drain is killed (-9)", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let a: TestNode;
  let victim: Awaited<ReturnType<typeof spawnNode>> | undefined;
  let env: Record<string, string>;

  beforeAll(async () => {
    database = await createTestDatabase();
    env = {
      ...stackEnv("services", prefix),
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
      // A's new socket learns where the old one was from its lease, which must still be there when
      // it connects (after the victim's ring membership ran out, in the second test): leases far
      // outlive the membership, as with the defaults (60 s against 3 s).
      PRESENCE_LEASE_SECONDS: "30",
    };
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "death-a" } });
  });
  afterAll(async () => {
    victim?.proc.kill(9);
    await a?.teardown();
    await database?.drop();
    removeScratchDataDirs();
  });

  /** Starts a victim node (a process of its own) and waits until A's ring has it. */
  async function startVictim(): Promise<NonNullable<typeof victim>> {
    const started = await spawnNode({ ...env, DATABASE_URL: database.url, ADMIN_TOKEN });
    victim = started;
    await waitUntil(() => a.actors.ringMembers().length >= 2, "the two nodes to see each other", 10_000);
    return started;
  }

  /** A new user whose user actor the ring places on `owner` ("a" or the victim). */
  async function userWithActorOn(owner: "a" | "victim") {
    const client = api(a.url);
    for (let tries = 0; tries < 64; tries++) {
      const user = await registerAndLogin(client);
      const onA = a.actors.ownerOf(userKey(user.userId)) === a.actors.nodeId;
      if (onA === (owner === "a")) return user;
    }
    throw new Error(`no user's actor landed on ${owner} in 64 tries`);
  }

  /**
   * Five messages for gina queued, read (not acked) by her socket on the victim; the victim frozen
   * (SIGSTOP: it neither closes that socket nor ends its drain, and its broker connection stays up),
   * gina's socket on A opened and live, then the victim killed (-9): A's socket, still open, must
   * get the five (A's teardown purges what a failed run leaves in the queue).
   */
  async function replaceOnADuringVictimDrain(actorOn: "a" | "victim") {
    const node = await startVictim();
    const alice = await registerAndLogin(api(a.url));
    const gina = await userWithActorOn(actorOn);
    const offline = a.offline as AmqpOfflineQueue;
    const sender = await TestSocket.open(a.url, alice.accessToken);
    const ids = await sendDirect(sender, gina.userId, 5, "held");
    await sender.close();
    await waitUntil(async () => (await offline.depth(gina.userId, 1)) === 5, "five queued messages");
    const old = await TestSocket.open(node.url, gina.accessToken);
    expect((await old.messages(5)).map((m) => m.id)).toEqual(ids);
    // Not acked: the victim's drain holds all five.
    node.proc.kill("SIGSTOP");
    if (actorOn === "victim") {
      // Gina's actor must move to A first: an ask to the frozen victim would only time out.
      await waitUntil(() => a.actors.ringMembers().length <= 1, "A to drop the frozen victim from its ring");
    }
    const fresh = await TestSocket.open(a.url, gina.accessToken);
    const registry = (a.gateway as unknown as { options: { registry: SocketRegistry } }).options.registry;
    await waitUntil(
      () => registry.get(gina.userId, 1)?.state === "live",
      () => `A's socket to go live (closed: ${JSON.stringify(fresh.closed)})`,
      30_000,
    );
    // A's socket read the queue and found nothing ready: the five are still the victim's.
    expect(await offline.depth(gina.userId, 1)).toBe(0);
    node.proc.kill(9);
    await node.proc.exited;
    victim = undefined;
    const got = await fresh.messages(5, 20_000).catch(async (error) => {
      const state = {
        newSocket: registry.get(gina.userId, 1)?.state,
        queueDepth: await offline.depth(gina.userId, 1),
      };
      throw new Error(`${(error as Error).message}: ${JSON.stringify(state)}`);
    });
    expect(got.map((m) => m.id).sort()).toEqual([...ids].sort());
    expect(fresh.closed).toBeUndefined();
    await fresh.close();
    await old.whenClosed(1).catch(() => undefined);
    await offline.purge(gina.userId, 1).catch(() => 0);
  }

  test("the live socket on the surviving node gets the messages the dead node held (user actor on the survivor)", async () => {
    await replaceOnADuringVictimDrain("a");
  }, 120_000);

  test("the live socket on the surviving node gets the messages the dead node held (user actor on the dead node)", async () => {
    await replaceOnADuringVictimDrain("victim");
  }, 120_000);
});
