import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { Connection } from "rabbitmq-client";
import { AmqpTransport } from "../../actors/amqp-transport.ts";
import { InMemoryTransport, TransportHub } from "../../actors/in-memory-transport.ts";
import type { Frame } from "../../actors/transport.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";

/** Polls `check` every 50 ms until it holds; throws after `timeoutMs` with `what`. */
async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

const frame = (n: number): Frame => ({ t: "env", keys: [`user:${n}`], msg: n, hops: 1 });

describe("AmqpTransport.adopt", () => {
  const prefix = runPrefix();
  const started: AmqpTransport[] = [];
  const admin = new Connection({ url: AMQP_URL, retryLow: 250, retryHigh: 1000 });

  /** Consumers of `nodeId`'s inbox as the broker counts them; -1 once the inbox is gone. */
  async function consumersOf(nodeId: string): Promise<number> {
    const channel = await admin.acquire();
    try {
      return (await channel.queueDeclare({ queue: `${prefix}.node.${nodeId}`, passive: true })).consumerCount;
    } catch {
      return -1;
    } finally {
      await channel.close().catch(() => undefined);
    }
  }

  async function startNode(nodeId: string, received: Frame[] = []): Promise<AmqpTransport> {
    const transport = new AmqpTransport({ nodeId, url: AMQP_URL, prefix, adoptGraceMs: 300 });
    started.push(transport);
    await transport.start(
      async (frames) => {
        received.push(...frames);
      },
      () => {},
    );
    return transport;
  }

  afterEach(async () => {
    for (const transport of started.splice(0)) await transport.stop().catch(() => false);
  });
  afterAll(async () => {
    await admin.close();
  });

  test("a survivor that takes a live node for dead (its heartbeat lapsed under load) takes nothing from its inbox", async () => {
    const forLive: Frame[] = [];
    await startNode("live", forLive);
    const survivor = await startNode("survivor");
    const stolen: Frame[] = [];
    let stop = false;
    let settled = false;
    const adoption = survivor
      .adopt(
        "live",
        async (frames) => {
          stolen.push(...frames);
        },
        () => stop,
      )
      .finally(() => {
        settled = true;
      });
    // Either the survivor leaves the inbox alone (gives up at once) or it consumes it beside the node.
    await waitUntil(async () => settled || (await consumersOf("live")) > 1, "the adoption to start or end");
    for (let n = 0; n < 40; n++) await survivor.send("live", [frame(n)]);
    await waitUntil(() => forLive.length + stolen.length === 40, "the 40 transfers to be consumed");
    stop = true;
    expect(await adoption).toBe(false);
    expect(stolen).toEqual([]);
    expect(forLive.map((f) => (f as { msg: number }).msg)).toEqual([...Array(40).keys()]);
  });

  test("a dead node's inbox is still adopted and deleted; the node coming back with its id consumes a new one", async () => {
    const dead = await startNode("dead");
    const survivor = await startNode("survivor2");
    await dead.abort();
    // The broker drops the dead node's consumer with its connection.
    await waitUntil(async () => (await consumersOf("dead")) === 0, "the dead node's consumer to go");
    for (let n = 0; n < 5; n++) await survivor.send("dead", [frame(n)]);
    const adopted: Frame[] = [];
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const adoption = survivor.adopt(
      "dead",
      async (frames) => {
        adopted.push(...frames);
        await released;
      },
      () => false,
    );
    await waitUntil(() => adopted.length === 5, "the survivor to take the five transfers");
    // The node restarts with the same id while its old inbox is being adopted: it may not consume
    // it beside the survivor, and starts once the survivor has emptied and deleted it.
    const forBack: Frame[] = [];
    let back: AmqpTransport | undefined;
    const restart = startNode("dead", forBack).then((transport) => {
      back = transport;
    });
    await Bun.sleep(500);
    expect(back).toBeUndefined();
    release();
    // Either the survivor deleted the emptied inbox (true), or the node's retried consume landed
    // between the survivor's cancel and its delete, and the node consumes its old, empty inbox
    // (false: left to its node). Seen at load 15. Both lose nothing: the checks below hold for both.
    await adoption;
    await restart;
    await survivor.send("dead", [frame(99)]);
    await waitUntil(() => forBack.length === 1, "the restarted node to get a new transfer");
    expect(forBack).toEqual([frame(99)]);
    expect(adopted.map((f) => (f as { msg: number }).msg)).toEqual([0, 1, 2, 3, 4]);
  });
});

describe("InMemoryTransport.adopt", () => {
  test("an adopter leaves the inbox of a node still consuming it, and takes a dead node's", async () => {
    const hub = new TransportHub();
    const forLive: Frame[] = [];
    const live = new InMemoryTransport("live", hub);
    await live.start(async (frames) => {
      forLive.push(...frames);
    });
    const survivor = new InMemoryTransport("survivor", hub);
    await survivor.start(async () => {});
    const stolen: Frame[] = [];
    const take = async (frames: Frame[]) => {
      stolen.push(...frames);
    };
    expect(await survivor.adopt("live", take, () => false)).toBe(false);
    await survivor.send("live", [frame(1)]);
    await waitUntil(() => forLive.length === 1, "the live node to get its transfer");
    expect(stolen).toEqual([]);
    // Once it has died (its consumer gone), its inbox is adopted, emptied and deleted.
    await live.abort();
    await survivor.send("live", [frame(2)]);
    expect(await survivor.adopt("live", take, () => false)).toBe(true);
    expect(stolen).toEqual([frame(2)]);
  });
});
