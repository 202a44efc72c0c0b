import { randomUUID } from "node:crypto";
import { connect } from "amqplib";
import { Redis } from "ioredis";
import {
  type ActorBehavior,
  type ActorSystem,
  AmqpTransport,
  createActorNode,
  type Frame,
  type Logger,
  type Transport,
} from "../../actors/index.ts";

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
export const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
/** Short timings so failure detection takes about a second, not the production default. */
export const HEARTBEAT_MS = 250;
export const TTL_MS = 1000;

/** One processed message as the recording actor saw it. */
export interface Processed {
  key: string;
  seq: number;
  node: string;
  /** Date.now() when the actor received it. */
  at: number;
}

/** One line a node logged, kept for a failing test's diagnosis (the nodes are silent otherwise). */
export interface LoggedEvent {
  at: number;
  node: string;
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

/** Message the recording actor understands. */
export interface RecordMessage {
  seq: number;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string) {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Counts transfers per destination, to check that fan-out is one transfer per node. */
export class CountingTransport implements Transport {
  readonly transfers = new Map<string, number>();
  constructor(private readonly inner: Transport) {}
  get nodeId() {
    return this.inner.nodeId;
  }
  start(handler: (frames: Frame[]) => Promise<void>, onFatal: (error: unknown) => void) {
    return this.inner.start(handler, onFatal);
  }
  send(nodeId: string, frames: Frame[]) {
    if (frames.some((frame) => frame.t === "env")) {
      this.transfers.set(nodeId, (this.transfers.get(nodeId) ?? 0) + 1);
    }
    return this.inner.send(nodeId, frames);
  }
  adopt(nodeId: string, handler: (frames: Frame[]) => Promise<void>, shouldStop: () => boolean) {
    return this.inner.adopt(nodeId, handler, shouldStop);
  }
  stop() {
    return this.inner.stop();
  }
  abort() {
    return this.inner.abort();
  }
}

/**
 * Nodes of one test run against the real Redis and RabbitMQ, under a random prefix so concurrent
 * runs never meet; records what every `rec:*` actor processed and whether any key was ever active
 * on two nodes at once.
 */
export class TestCluster {
  readonly prefix = `cbtest-${randomUUID().slice(0, 8)}`;
  readonly nodes = new Map<string, ActorSystem>();
  readonly processed: Processed[] = [];
  readonly activeOn = new Map<string, string>();
  readonly doubleActivations: string[] = [];
  readonly activations: { key: string; node: string; at: number }[] = [];
  /** What the nodes logged (info and above), oldest first. */
  readonly events: LoggedEvent[] = [];
  private readonly nodeIds = new Set<string>();

  /** Records a step of the test among the nodes' log lines. */
  mark(step: string): void {
    this.events.push({ at: Date.now(), node: "test", level: "info", msg: step, fields: {} });
  }

  /** A logger that records what `node` logs into {@link events}. */
  loggerFor(node: string): Logger {
    const record = (level: string) => (obj: object, msg?: string) => {
      const fields: Record<string, unknown> = {};
      for (const [name, value] of Object.entries(obj)) {
        if (name === "nodeId") continue;
        fields[name] = value instanceof Error ? `${value.name}: ${value.message}` : value;
      }
      this.events.push({ at: Date.now(), node, level, msg: msg ?? "", fields });
    };
    return { debug() {}, info: record("info"), warn: record("warn"), error: record("error") };
  }

  /** Starts an in-process node with its own Redis and RabbitMQ connections. */
  async node(
    nodeId: string,
    wrap?: (transport: Transport) => Transport,
    recorder?: (key: string, node: string) => ActorBehavior,
  ): Promise<ActorSystem> {
    this.nodeIds.add(nodeId);
    const logger = this.loggerFor(nodeId);
    const amqp = new AmqpTransport({ nodeId, url: AMQP_URL, prefix: this.prefix, logger });
    const system = createActorNode({
      nodeId,
      logger,
      redisUrl: REDIS_URL,
      prefix: this.prefix,
      heartbeatMs: HEARTBEAT_MS,
      ttlMs: TTL_MS,
      handoffTimeoutMs: 3000,
      idleTimeoutMs: 0,
      transport: wrap ? wrap(amqp) : amqp,
    });
    system.register("rec", (_id, key) => (recorder ?? this.recorder.bind(this))(key, nodeId));
    await system.start();
    this.nodes.set(nodeId, system);
    return system;
  }

  /** Remembers a node id started elsewhere (a child process) so cleanup deletes its queue. */
  track(nodeId: string): void {
    this.nodeIds.add(nodeId);
  }

  /** Waits until every listed node sees exactly `members` on its ring. */
  async converged(members: string[], timeoutMs = 15_000): Promise<void> {
    const expected = [...members].sort().join(",");
    await until(
      () => [...this.nodes.values()].every((node) => node.ringMembers().join(",") === expected),
      timeoutMs,
      `rings to converge on ${expected}`,
    );
  }

  /** Nodes where `key` is active right now. */
  whereActive(key: string): string[] {
    return [...this.nodes].filter(([, node]) => node.isActive(key)).map(([id]) => id);
  }

  async cleanup(): Promise<void> {
    await Promise.all([...this.nodes.values()].map((node) => node.abort().catch(() => undefined)));
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`${this.prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
    const amqp = await connect(AMQP_URL);
    for (const nodeId of this.nodeIds) {
      const channel = await amqp.createChannel();
      channel.on("error", () => undefined);
      await channel.deleteQueue(`${this.prefix}.node.${nodeId}`).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
    await amqp.close();
  }

  private recorder(key: string, node: string): ActorBehavior {
    return {
      onActivate: () => {
        const other = this.activeOn.get(key);
        if (other !== undefined && other !== node)
          this.doubleActivations.push(`${key} on ${other} and ${node}`);
        this.activeOn.set(key, node);
        this.activations.push({ key, node, at: Date.now() });
      },
      receive: (message: unknown) => {
        this.processed.push({ key, seq: (message as RecordMessage).seq, node, at: Date.now() });
        return node;
      },
      onPassivate: async () => {
        // Saving state takes time; a new owner that does not wait for the handoff would overlap.
        await sleep(50);
        if (this.activeOn.get(key) === node) this.activeOn.delete(key);
      },
    };
  }
}

/**
 * Sends `rec` messages with increasing seq from the given nodes to the given keys, at most
 * `inFlight` unconfirmed at once, until stopped; remembers which seqs were accepted.
 */
export class Load {
  readonly accepted = new Set<number>();
  /** Per accepted seq: its key, the sending node, the owner that node saw when it sent, when it was accepted. */
  readonly sent = new Map<number, { key: string; sender: string; owner: string; at: number }>();
  readonly refused: unknown[] = [];
  private seq = 0;
  private running = true;
  private readonly loops: Promise<void>[] = [];

  constructor(senders: ActorSystem[], keys: string[], inFlight = 20) {
    for (const sender of senders) {
      for (let lane = 0; lane < inFlight; lane++) this.loops.push(this.loop(sender, keys));
    }
  }

  private async loop(sender: ActorSystem, keys: string[]): Promise<void> {
    while (this.running) {
      const seq = ++this.seq;
      const key = keys[seq % keys.length];
      const owner = sender.ownerOf(key);
      try {
        await sender.tell(key, { seq } satisfies RecordMessage);
        this.accepted.add(seq);
        this.sent.set(seq, { key, sender: sender.nodeId, owner, at: Date.now() });
      } catch (error) {
        this.refused.push(error);
        await sleep(10);
      }
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}

/**
 * Waits until every seq `load` accepted was processed by some node, for as long as they keep
 * coming: fails when none of the missing ones arrived for `quietMs`, or after `capMs` in all (a
 * loaded machine makes messages late; a lost one never comes, so the wait ends `quietMs` after the
 * last arrival). Before failing it looks for `diagnoseMs` more, to tell late from lost, and throws
 * an error naming each seq missing at the failure: its key, sender, the owner the sender saw, its
 * owner now on every node, and when and where it arrived late, or "never"; with the nodes' log
 * lines (times in ms since the wait began).
 */
export async function everyAcceptedProcessed(
  cluster: TestCluster,
  load: Load,
  { quietMs = 30_000, capMs = 120_000, diagnoseMs = 30_000 } = {},
): Promise<void> {
  const started = Date.now();
  const seen = new Map<number, Processed>();
  let read = 0;
  let waiting = new Set(load.accepted);
  let lastArrival = started;
  const look = () => {
    for (; read < cluster.processed.length; read++) {
      const p = cluster.processed[read];
      if (!seen.has(p.seq)) seen.set(p.seq, p);
      if (waiting.delete(p.seq)) lastArrival = Date.now();
    }
    return waiting.size;
  };
  while (look() > 0) {
    const now = Date.now();
    if (now - lastArrival > quietMs || now - started > capMs) break;
    await sleep(20);
  }
  if (waiting.size === 0) return;
  const atFailure = [...waiting].sort((x, y) => x - y);
  const failedAt = Date.now();
  waiting = new Set(atFailure);
  while (look() > 0 && Date.now() - failedAt < diagnoseMs) await sleep(50);
  const rel = (at: number) => `${at - started}ms`;
  const lines = atFailure.slice(0, 40).map((seq) => {
    const sent = load.sent.get(seq);
    const key = sent?.key ?? "?";
    const now = [...cluster.nodes].map(([id, node]) => `${id}:${node.ownerOf(key)}`).join(",");
    const late = seen.get(seq);
    const arrival = late ? `arrived ${rel(late.at)} on ${late.node}` : "never arrived";
    return `seq ${seq} ${key} sent by ${sent?.sender} at ${sent ? rel(sent.at) : "?"} to owner ${sent?.owner}; owners now ${now}; ${arrival}`;
  });
  const log = cluster.events.map(
    (e) => `${rel(e.at)} ${e.node} ${e.level} ${e.msg} ${JSON.stringify(e.fields)}`,
  );
  throw new Error(
    `${atFailure.length} accepted messages not processed after ${rel(failedAt)} (last arrival at ${rel(lastArrival)}; ` +
      `${waiting.size} still missing ${diagnoseMs} ms later):\n${lines.join("\n")}\nnode log:\n${log.slice(-150).join("\n")}`,
  );
}
