import { randomUUID } from "node:crypto";
import { cpus, loadavg } from "node:os";
import { LatencyHistogram, type LatencySummary } from "../histogram.ts";
import { directFrame, plainBody } from "../load.ts";
import type { LoadtestOptions } from "../options.ts";
import { Progress } from "../progress.ts";
import { ReconnectingClient } from "../reconnecting-client.ts";
import { type SpawnedServer, spawnNode } from "../servers.ts";
import { OwnPostgres } from "../services/own-postgres.ts";
import { OwnRabbitMq } from "../services/own-rabbitmq.ts";
import { OwnRedis } from "../services/own-redis.ts";
import { clearboxTarget } from "../targets.ts";

export type FaultService = "rabbitmq" | "redis" | "postgres";

/** A stretch without deliveries this long counts as delivery having stopped. */
export const STALL_MS = 1000;

/** What one fault did to the traffic (times in ms; `null` when it never happened in the run). */
export interface FaultResult {
  service: FaultService;
  /** Seconds the service was left down (`--down`). */
  downS: number;
  /** kill -9 → the restarted service answers again (includes its boot: RabbitMQ takes long). */
  outageMs: number;
  /**
   * kill → deliveries resumed: the end of the longest stretch without any delivery between the
   * kill and the end of sending (a few in-flight messages may still arrive just after the kill, so
   * the first delivery after it says little). `null`: nothing was delivered after the kill.
   */
  recoveryFromKillMs: number | null;
  /** Service back → deliveries resumed (as above); negative when they resumed before it was back. */
  recoveryFromBackMs: number | null;
  /** kill → the first delivery of a message first sent after the kill (any path). */
  firstNewDeliveryMs: number | null;
  /** The longest time without any delivery at all, from the kill until sending stopped. */
  longestDeliveryGapMs: number;
  /**
   * Whether delivery stalled at all: a gap of at least STALL_MS (at the default 100 msgs/s a
   * delivery is due every 10 ms). When false, both "resumed" figures are null.
   */
  deliveriesStopped: boolean;
  /** Stop sending → every send answered and every accepted message delivered (or the drain timeout). */
  drainMs: number;
  sent: number;
  accepted: number;
  /** Final `rejected` answers (not `busy`, which is retried), by code. */
  rejected: Record<string, number>;
  /** accepted + rejected: sends the client got a final answer to. */
  answered: number;
  /** Sends with no final answer when the drain ended. */
  unanswered: number;
  /** Accepted messages the recipient never got. */
  lost: number;
  /** Copies a client got of a message it already had (strict: across reconnects too). */
  duplicated: number;
  /** Messages that arrived after one its sender had accepted later (per sender → recipient stream). */
  outOfOrder: number;
  /** Streams with at least one message out of order. */
  outOfOrderStreams: number;
  /** Deliveries of ids this run never sent to that device. */
  unexpected: number;
  /** Client sockets opened again after a drop or a server close. */
  reconnects: number;
  /** Sends written again with the same id (after a reconnect, a retryable answer or a timeout). */
  resends: number;
  /** `error internal` answers (retried with the same id). */
  retryableErrors: number;
  /** `rejected busy` answers (retried with the same id). */
  busy: number;
  /** Node processes that exited during this fault, as `node <i>: <code or signal>`. */
  nodeExits: string[];
  /** Send (the time it was due) → first delivery, every message of the fault. */
  deliveredMs: LatencySummary;
}

export interface ChaosResult {
  scenario: "chaos";
  nodes: number;
  users: number;
  rate: number;
  durationS: number;
  faults: FaultResult[];
  /**
   * Warnings and errors the nodes logged, counted by message (`<level> <msg>`; each node keeps
   * its first 50 lines, so counts are a floor); lines that are not JSON count under `unparsed`.
   */
  serverProblems: Record<string, number>;
  /** The first few node output lines that were not JSON log lines (stack traces, runtime warnings). */
  unparsedSamples: string[];
  machine: { cpus: number; loadavg: number[]; bun: string };
  startedAt: string;
  runS: number;
}

/** One message as the run follows it. */
export interface Sent {
  fault: number;
  stream: number;
  /** When it was due (performance.now()). */
  at: number;
  /** Its place in the stream's acceptance order, once accepted. */
  acceptedSeq?: number;
  rejected?: string;
  deliveredAt?: number;
}

/** A sender → recipient pair: the recipient is the next user, connected to the next node. */
export interface Stream {
  sender: number;
  recipient: number;
  accepted: number;
  /** Ids of the stream in the order the recipient first got them. */
  arrivals: string[];
}

/** The private instances of the run, each started once and killed at the end whatever happens. */
interface Services {
  postgres: OwnPostgres;
  redis: OwnRedis;
  rabbitmq: OwnRabbitMq;
}

async function startServices(progress: Progress): Promise<Services> {
  progress.note("chaos: starting private PostgreSQL, Redis and RabbitMQ instances");
  const [postgres, redis, rabbitmq] = await Promise.allSettled([
    OwnPostgres.start(),
    OwnRedis.start(),
    OwnRabbitMq.start(),
  ]);
  const value = <T>(s: PromiseSettledResult<T>) => (s.status === "fulfilled" ? s.value : undefined);
  if (postgres.status === "fulfilled" && redis.status === "fulfilled" && rabbitmq.status === "fulfilled") {
    return { postgres: postgres.value, redis: redis.value, rabbitmq: rabbitmq.value };
  }
  await stopServices({ postgres: value(postgres), redis: value(redis), rabbitmq: value(rabbitmq) });
  const failed = [postgres, redis, rabbitmq].find((s) => s.status === "rejected");
  throw (failed as PromiseRejectedResult).reason;
}

async function stopServices(services: Partial<Services>): Promise<void> {
  await Promise.allSettled([services.postgres?.stop(), services.redis?.stop(), services.rabbitmq?.destroy()]);
}

/** kill -9 of `service`, and its restart (resolves once it answers again). */
function faultOf(services: Services, service: FaultService) {
  switch (service) {
    case "rabbitmq":
      return { kill: () => services.rabbitmq.crash(), restart: () => services.rabbitmq.start() };
    case "redis":
      return { kill: () => services.redis.kill(), restart: () => services.redis.restart() };
    case "postgres":
      return { kill: () => services.postgres.kill(), restart: () => services.postgres.restart() };
  }
}

/**
 * `npm run loadtest -- chaos`: three nodes (`--nodes`) on the services stack, on PostgreSQL, Redis
 * and RabbitMQ instances of the run's own (never the machine's shared ones), under steady 1:1
 * traffic at `--rate` msgs/s from reconnecting clients (every user sends to the next user, who is
 * connected to the next node). For each service in turn (`--service`): `--duration` s of traffic,
 * kill -9 of the service, `--down` s later its restart, `--duration` s more of traffic, then a drain
 * until every send is answered and every accepted message delivered (`--drain-timeout`). Nodes are
 * never restarted by the harness: an exit is reported. The private instances are killed at the end,
 * on an error, and on SIGINT/SIGTERM.
 */
export async function runChaos(options: LoadtestOptions): Promise<ChaosResult> {
  const t0 = performance.now();
  const startedAt = new Date().toISOString();
  const load = loadavg().map((l) => Math.round(l * 100) / 100);
  const progress = new Progress(options.progress);
  const rate = typeof options.rate === "number" ? options.rate : 100;
  const order: FaultService[] =
    options.service === "all" ? ["rabbitmq", "redis", "postgres"] : [options.service];

  const services = await startServices(progress);
  const nodes: SpawnedServer[] = [];
  const clients: ReconnectingClient[] = [];
  const onSignal = (signal: NodeJS.Signals) => {
    progress.note(`chaos: ${signal}: killing the private service instances and the nodes`);
    for (const node of nodes) void node.stop();
    void stopServices(services).then(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const databaseUrl = await services.postgres.createDatabase("clearbox_chaos");
    const env = {
      DATABASE_URL: databaseUrl,
      REDIS_URL: services.redis.url,
      AMQP_URL: services.rabbitmq.url,
      REDIS_PREFIX: "chaos:",
    };
    progress.note(`chaos: starting ${options.nodes} ClearBox nodes`);
    for (let i = 0; i < options.nodes; i++) nodes.push(await spawnNode(env, i));
    const exits: { node: number; code: number | string; at: number }[] = [];
    nodes.forEach((node, i) => {
      void node.exited.then((code) => exits.push({ node: i, code, at: performance.now() }));
    });
    // Nodes of a cluster must see each other in the ring before users arrive (as run.ts waits).
    await Bun.sleep(3000);

    const target = clearboxTarget(
      nodes.map((n) => n.url),
      options.concurrency,
    );
    const users = await target.createUsers(options.users, () => {});
    const sent = new Map<string, Sent>();
    const streams: Stream[] = users.map((_, i) => ({
      sender: i,
      recipient: (i + 1) % users.length,
      accepted: 0,
      arrivals: [],
    }));
    const faultUnexpected: number[] = [];
    let currentFault = 0;
    for (const [index, device] of users.entries()) {
      clients.push(
        new ReconnectingClient(device, target, {
          accepted(id) {
            const message = sent.get(id);
            if (!message || message.acceptedSeq !== undefined) return;
            const stream = streams[message.stream] as Stream;
            message.acceptedSeq = stream.accepted++;
          },
          rejected(id, code) {
            const message = sent.get(id);
            if (message) message.rejected = code;
          },
          delivered(id, _from, at) {
            const message = sent.get(id);
            const stream = message && (streams[message.stream] as Stream);
            if (!message || !stream || stream.recipient !== index) {
              faultUnexpected[currentFault] = (faultUnexpected[currentFault] ?? 0) + 1;
              return;
            }
            message.deliveredAt = at;
            stream.arrivals.push(id);
          },
        }),
      );
    }
    await Promise.all(clients.map((c) => c.ready()));
    const body = plainBody(options.size);

    /** Sends at `rate` round-robin over the streams until `stop()`; message k is due at start + k/rate. */
    const sendAtRate = (fault: number) => {
      const start = performance.now();
      let count = 0;
      const timer = setInterval(() => {
        const due = Math.floor(((performance.now() - start) / 1000) * rate);
        while (count < due) {
          const streamIndex = count % streams.length;
          const stream = streams[streamIndex] as Stream;
          const recipient = users[stream.recipient] as (typeof users)[number];
          const id = randomUUID();
          sent.set(id, { fault, stream: streamIndex, at: start + (count * 1000) / rate });
          (clients[stream.sender] as ReconnectingClient).send(
            id,
            directFrame(id, recipient.userId, recipient.deviceId, body),
          );
          count++;
        }
      }, 5);
      return () => clearInterval(timer);
    };

    const faults: FaultResult[] = [];
    for (const [fault, service] of order.entries()) {
      currentFault = fault;
      const faultStart = performance.now();
      const before = clients.map((c) => ({ ...counters(c) }));
      const { kill, restart } = faultOf(services, service);
      const status = () => {
        let accepted = 0;
        let delivered = 0;
        let total = 0;
        for (const m of sent.values()) {
          if (m.fault !== fault) continue;
          total++;
          if (m.acceptedSeq !== undefined) accepted++;
          if (m.deliveredAt !== undefined) delivered++;
        }
        const pending = clients.reduce((n, c) => n + c.pending, 0);
        return `sent ${total} accepted ${accepted} delivered ${delivered} unanswered ${pending}`;
      };
      progress.start(`chaos ${service}`, status);
      const stopSending = sendAtRate(fault);
      await Bun.sleep(options.durationS * 1000);
      progress.note(`chaos: kill -9 ${service}`);
      const killAt = performance.now();
      await kill();
      await Bun.sleep(options.downS * 1000);
      progress.note(`chaos: restarting ${service}`);
      await restart();
      const backAt = performance.now();
      progress.note(`chaos: ${service} back after ${Math.round(backAt - killAt)} ms`);
      await Bun.sleep(options.durationS * 1000);
      stopSending();
      const stopAt = performance.now();
      const mine = () => [...sent.values()].filter((m) => m.fault === fault);
      const settled = () =>
        mine().every(
          (m) => m.rejected !== undefined || (m.acceptedSeq !== undefined && m.deliveredAt !== undefined),
        );
      const drainDeadline = stopAt + options.drainTimeoutS * 1000;
      while (!settled() && performance.now() < drainDeadline) await Bun.sleep(50);
      // Late duplicates (a redelivery after a reconnect) show up within a moment of the drain.
      await Bun.sleep(1000);
      const drainMs = performance.now() - stopAt;
      progress.stop();
      faults.push(
        summariseFault({
          service,
          downS: options.downS,
          messages: mine(),
          streams,
          sentIds: sent,
          fault,
          killAt,
          backAt,
          stopAt,
          drainMs,
          clients,
          before,
          unexpected: faultUnexpected[fault] ?? 0,
          exits: exits.filter((e) => e.at >= faultStart),
        }),
      );
      const last = faults.at(-1) as FaultResult;
      progress.note(
        `chaos ${service}: sent ${last.sent} accepted ${last.accepted} lost ${last.lost} dup ${last.duplicated} ` +
          `out-of-order ${last.outOfOrder} reconnects ${last.reconnects} recovery ${last.recoveryFromKillMs} ms`,
      );
    }
    return {
      scenario: "chaos",
      nodes: nodes.length,
      users: users.length,
      rate,
      durationS: options.durationS,
      faults,
      serverProblems: countProblems(nodes.flatMap((n) => n.problems)),
      unparsedSamples: nodes
        .flatMap((n) => n.problems)
        .filter((line) => !line.startsWith('{"level":'))
        .slice(0, 5)
        .map((line) => line.slice(0, 200)),
      machine: { cpus: cpus().length, loadavg: load, bun: Bun.version },
      startedAt,
      runS: Math.round(performance.now() - t0) / 1000,
    };
  } finally {
    for (const client of clients) client.close();
    for (const node of nodes) await node.stop();
    await stopServices(services);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

const LEVELS: Record<number, string> = { 40: "warn", 50: "error", 60: "fatal" };

/**
 * Counts log lines by `<level> <msg>`. The harness keeps each line's first 400 characters, so a
 * long line (an error with its stack) may have lost its `msg`, which pino writes last: it counts as
 * `<level> (line cut before msg)`. Output that is not a JSON log line counts as `unparsed`.
 */
function countProblems(lines: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of lines) {
    let key = "unparsed";
    const level = /^\{"level":(\d+)/.exec(line)?.[1];
    if (level !== undefined) {
      const msg = /"msg":"((?:[^"\\]|\\.)*)"/.exec(line)?.[1];
      key = `${LEVELS[Number(level)] ?? level} ${msg ?? "(line cut before msg)"}`;
    }
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

function counters(c: ReconnectingClient) {
  return {
    reconnects: c.reconnects,
    duplicates: c.duplicates,
    resends: c.resends,
    retryableErrors: c.retryableErrors,
    busy: c.busy,
  };
}

/**
 * The figures of one fault from what the run recorded: `messages` are the fault's sends (times are
 * performance.now() ms), `streams` every stream with its recipient's arrivals in order, `sentIds`
 * every send of the run by id, `clients`/`before` the client counters now and at the fault's start.
 */
export function summariseFault(input: {
  service: FaultService;
  downS: number;
  messages: Sent[];
  streams: Stream[];
  sentIds: Map<string, Sent>;
  fault: number;
  killAt: number;
  backAt: number;
  stopAt: number;
  drainMs: number;
  clients: ReconnectingClient[];
  before: ReturnType<typeof counters>[];
  unexpected: number;
  exits: { node: number; code: number | string; at: number }[];
}): FaultResult {
  const { messages, killAt, backAt, stopAt } = input;
  const rejected: Record<string, number> = {};
  let accepted = 0;
  let lost = 0;
  let firstNew = Number.POSITIVE_INFINITY;
  const deliveries: number[] = [];
  const latency = new LatencyHistogram();
  for (const m of messages) {
    if (m.rejected !== undefined) rejected[m.rejected] = (rejected[m.rejected] ?? 0) + 1;
    if (m.acceptedSeq !== undefined) {
      accepted++;
      if (m.deliveredAt === undefined) lost++;
    }
    if (m.deliveredAt === undefined) continue;
    deliveries.push(m.deliveredAt);
    latency.record(m.deliveredAt - m.at);
    if (m.at >= killAt) firstNew = Math.min(firstNew, m.deliveredAt - killAt);
  }
  // The longest stretch without a delivery while messages were being sent after the kill.
  const after = deliveries.filter((t) => t > killAt).sort((a, b) => a - b);
  const marks = [killAt, ...after.filter((t) => t < stopAt), stopAt];
  let gap = 0;
  let resumedAt = Number.NaN;
  for (let i = 1; i < marks.length; i++) {
    const length = (marks[i] as number) - (marks[i - 1] as number);
    if (length > gap) {
      gap = length;
      resumedAt = marks[i] as number;
    }
  }
  // The longest gap ran to the end of sending: deliveries resumed with the first one after it, if any.
  if (resumedAt === stopAt) resumedAt = after.find((t) => t >= stopAt) ?? Number.NaN;
  // Out of order: an arrival whose acceptance came before one that arrived earlier on its stream.
  let outOfOrder = 0;
  let outOfOrderStreams = 0;
  for (const stream of input.streams) {
    let highest = -1;
    let bad = 0;
    for (const id of stream.arrivals) {
      const m = input.sentIds.get(id);
      if (!m || m.fault !== input.fault || m.acceptedSeq === undefined) continue;
      if (m.acceptedSeq < highest) bad++;
      else highest = m.acceptedSeq;
    }
    outOfOrder += bad;
    if (bad > 0) outOfOrderStreams++;
  }
  const delta = (key: keyof ReturnType<typeof counters>) =>
    input.clients.reduce((sum, c, i) => sum + counters(c)[key] - (input.before[i]?.[key] ?? 0), 0);
  const rejectedCount = Object.values(rejected).reduce((a, b) => a + b, 0);
  const ms = (value: number) => (Number.isFinite(value) ? Math.round(value) : null);
  return {
    service: input.service,
    downS: input.downS,
    outageMs: Math.round(backAt - killAt),
    recoveryFromKillMs: gap >= STALL_MS ? ms(resumedAt - killAt) : null,
    recoveryFromBackMs: gap >= STALL_MS ? ms(resumedAt - backAt) : null,
    firstNewDeliveryMs: ms(firstNew),
    longestDeliveryGapMs: Math.round(gap),
    deliveriesStopped: gap >= STALL_MS,
    drainMs: Math.round(input.drainMs),
    sent: messages.length,
    accepted,
    rejected,
    answered: accepted + rejectedCount,
    unanswered: messages.length - accepted - rejectedCount,
    lost,
    duplicated: delta("duplicates"),
    outOfOrder,
    outOfOrderStreams,
    unexpected: input.unexpected,
    reconnects: delta("reconnects"),
    resends: delta("resends"),
    retryableErrors: delta("retryableErrors"),
    busy: delta("busy"),
    nodeExits: input.exits.map((e) => `node ${e.node}: ${e.code}`),
    deliveredMs: latency.summary(),
  };
}

const resumed = (f: FaultResult, value: number | null) =>
  !f.deliveriesStopped ? `did not stop (no ${STALL_MS} ms gap)` : (value ?? "never");

/** The chaos run as a table: one column per fault. */
export function chaosReport(run: ChaosResult): string {
  const rows: [string, (f: FaultResult) => string | number][] = [
    ["down (s, --down)", (f) => f.downS],
    ["kill → service answers again (ms)", (f) => f.outageMs],
    ["kill → deliveries resumed (ms)", (f) => resumed(f, f.recoveryFromKillMs)],
    ["service back → deliveries resumed (ms)", (f) => resumed(f, f.recoveryFromBackMs)],
    ["kill → first delivery of a later send (ms)", (f) => f.firstNewDeliveryMs ?? "never"],
    ["longest gap without deliveries (ms)", (f) => f.longestDeliveryGapMs],
    ["drain after sending stopped (ms)", (f) => f.drainMs],
    ["sent", (f) => f.sent],
    ["accepted", (f) => f.accepted],
    ["rejected", (f) => JSON.stringify(f.rejected)],
    ["answered", (f) => f.answered],
    ["unanswered", (f) => f.unanswered],
    ["lost (accepted, never delivered)", (f) => f.lost],
    ["duplicated (as the client sees)", (f) => f.duplicated],
    ["out of order (msgs / streams)", (f) => `${f.outOfOrder} / ${f.outOfOrderStreams}`],
    ["unexpected deliveries", (f) => f.unexpected],
    ["client reconnects", (f) => f.reconnects],
    ["resends (same id)", (f) => f.resends],
    ["retryable errors / busy", (f) => `${f.retryableErrors} / ${f.busy}`],
    ["node exits", (f) => (f.nodeExits.length ? f.nodeExits.join(", ") : 0)],
    [
      "delivered p50 / p99 / max (ms)",
      (f) => `${f.deliveredMs.p50} / ${f.deliveredMs.p99} / ${f.deliveredMs.max}`,
    ],
  ];
  const header = ["", ...run.faults.map((f) => `kill -9 ${f.service}`)];
  const table = [header, ...rows.map(([label, get]) => [label, ...run.faults.map((f) => String(get(f)))])];
  const widths = header.map((_, i) => Math.max(...table.map((row) => (row[i] ?? "").length)));
  const lines = table.map((row) => row.map((cell, i) => cell.padEnd(widths[i] as number)).join("  "));
  return [
    `chaos: ${run.nodes} nodes (services stack on private instances), ${run.users} users, ` +
      `1:1 at ${run.rate} msgs/s, ${run.durationS} s before each kill and after each restart`,
    `machine: ${run.machine.cpus} CPUs, load ${run.machine.loadavg.join(" ")}, bun ${run.machine.bun}; run ${run.runS} s`,
    "",
    ...lines,
    ...(Object.keys(run.serverProblems).length
      ? [
          "",
          "node log lines at warn or above (first 50 per node), by message:",
          ...Object.entries(run.serverProblems).map(([msg, n]) => `  ${n} × ${msg}`),
          ...run.unparsedSamples.map((line) => `  unparsed: ${line}`),
        ]
      : []),
  ].join("\n");
}

/** True when every fault ended with every send answered, nothing lost, duplicated or out of order, and no node exit. */
export function chaosClean(run: ChaosResult): boolean {
  return run.faults.every(
    (f) =>
      f.unanswered === 0 &&
      f.lost === 0 &&
      f.duplicated === 0 &&
      f.outOfOrder === 0 &&
      f.unexpected === 0 &&
      f.nodeExits.length === 0,
  );
}
