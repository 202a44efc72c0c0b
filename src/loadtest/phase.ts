import type { HeapReading } from "./gc-hook.ts";
import { drive, type LoadPlan, settle } from "./load.ts";
import type { LoadtestOptions } from "./options.ts";
import { inPool } from "./pool.ts";
import type { ResourceSampler, ResourceSummary } from "./process-stats.ts";
import { selfCpu, type TransportCounts, transportCounts } from "./process-stats.ts";
import type { Progress } from "./progress.ts";
import type { LoadSocket } from "./socket.ts";
import type { Target, VirtualDevice } from "./targets.ts";
import { type PhaseCounts, Tracker } from "./tracker.ts";

/** A server under test in this run: ClearBox (one or more nodes) or the raw relay. */
export interface System {
  name: "clearbox" | "relay";
  target: Target;
  sampler: ResourceSampler;
  /** The admin listener of the (first) node, when known: the abuse scenario sends it wrong tokens. */
  adminUrl?: string;
  /**
   * The RabbitMQ queue prefix of spawned services-stack nodes: the offline scenario reads the
   * broker's queue count and memory for it (`src/loadtest/broker.ts`).
   */
  queuePrefix?: string;
  /**
   * Every spawned node's admin listener: with more than one node, each phase also reports what
   * crossed the node transport (transfers and frames per 1,000 delivered, frames per transfer).
   */
  admins?: { adminUrl: string; adminToken: string }[];
  /**
   * Has every process the sampler measures run a full garbage collection and returns their JS heaps
   * afterwards (gc-hook.ts, via `SpawnedServer.collectGarbage`); absent when the servers are not
   * the harness's own (`--url`), whose memory is then read as it is.
   */
  collectGarbage?: () => Promise<HeapReading[]>;
}

/** What a scenario gets: options, the progress line, and the system it measures. */
export interface ScenarioContext {
  options: LoadtestOptions;
  progress: Progress;
  system: System;
}

/** The measured outcome of one phase of a scenario against one system. */
export interface PhaseResult extends PhaseCounts {
  phase: string;
  system: "clearbox" | "relay";
  /** Fixed rate asked for (msgs/s), absent when flat out. */
  rate?: number;
  sendingS: number;
  /** Deliveries per second, first send to last delivery. */
  msgsPerSec: number;
  acceptedPerSec: number;
  server?: ResourceSummary;
  harnessCpuPercent: number;
  /** Scenario-specific figures (connections, bytes per connection, drain time...). */
  extra?: Record<string, number>;
}

const k = (n: number) => (n >= 10_000 ? `${(n / 1000).toFixed(1)}k` : String(n));

/** A progress status for a tracker. */
export function trackerStatus(t: Tracker, sampler?: ResourceSampler): () => string {
  let lastDelivered = 0;
  let lastAt = performance.now();
  return () => {
    const now = performance.now();
    const rate = ((t.delivered - lastDelivered) / (now - lastAt)) * 1000;
    lastDelivered = t.delivered;
    lastAt = now;
    void sampler;
    return `sent ${k(t.sent)} accepted ${k(t.accepted)} delivered ${k(t.delivered)} (${k(Math.round(rate))}/s) dup ${t.duplicated} p99 ${t.deliverLatency.at(99)} ms`;
  };
}

/** Opens sockets for `devices` with bounded concurrency, showing progress. */
export async function connectAll(
  ctx: ScenarioContext,
  devices: VirtualDevice[],
  what: string,
  open: (d: VirtualDevice) => Promise<LoadSocket>,
  concurrency = 64,
): Promise<LoadSocket[]> {
  let done = 0;
  ctx.progress.start(`${ctx.system.name} connect ${what}`, () => `${done}/${devices.length} open`);
  try {
    return await inPool(
      devices.length,
      concurrency,
      (i) => open(devices[i] as VirtualDevice),
      (n) => {
        done = n;
      },
    );
  } finally {
    ctx.progress.stop();
  }
}

/** Creates users with the progress line showing how many are done. */
export async function makeUsers(ctx: ScenarioContext, count: number, e2ee = false): Promise<VirtualDevice[]> {
  let done = 0;
  const t0 = performance.now();
  ctx.progress.start(`${ctx.system.name} accounts`, () => `${done}/${count} users created`);
  try {
    return await ctx.system.target.createUsers(
      count,
      (n) => {
        done = n;
      },
      e2ee,
    );
  } finally {
    ctx.progress.stop();
    ctx.progress.note(
      `${ctx.system.name}: ${count} users ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
  }
}

/**
 * Runs one measured phase: fresh tracker on `sockets`, resource sampling, the load `plan` (minus
 * its tracker), then waits for every accepted message to be delivered (or the drain timeout).
 */
export async function measure(
  ctx: ScenarioContext,
  phase: string,
  sockets: LoadSocket[],
  plan: Omit<LoadPlan, "tracker">,
): Promise<PhaseResult> {
  const tracker = new Tracker();
  for (const s of sockets) s.tracker = tracker;
  const admins = ctx.system.admins ?? [];
  const transportBefore = admins.length > 1 ? await transportCounts(admins) : undefined;
  await ctx.system.sampler.start();
  const cpu = selfCpu();
  ctx.progress.start(`${ctx.system.name} ${phase}`, trackerStatus(tracker));
  let sendingMs = 0;
  try {
    ({ sendingMs } = await drive({ ...plan, tracker }));
    await settle(tracker, ctx.options.drainTimeoutS * 1000);
  } finally {
    ctx.progress.stop();
  }
  const harnessCpuPercent = cpu();
  const server = await ctx.system.sampler.finish();
  const result = summarise(ctx, phase, tracker, sendingMs, server, harnessCpuPercent, plan.rate);
  const transportAfter = transportBefore ? await transportCounts(admins) : undefined;
  if (transportBefore && transportAfter) addTransport(result, transportBefore, transportAfter);
  return result;
}

/**
 * Adds what crossed the node transport during the phase: transfers and frames per 1,000 delivered
 * messages, and frames per transfer (read from the nodes' counters, so they survive load).
 */
function addTransport(result: PhaseResult, before: TransportCounts, after: TransportCounts): void {
  const transfers = after.transfers - before.transfers;
  const frames = after.frames - before.frames;
  if (result.delivered <= 0) return;
  const per1000 = (n: number) => Math.round((n / result.delivered) * 1000 * 10) / 10;
  result.extra = {
    ...result.extra,
    transfersPer1000: per1000(transfers),
    framesPer1000: per1000(frames),
    ...(transfers > 0 ? { framesPerTransfer: Math.round((frames / transfers) * 10) / 10 } : {}),
  };
}

/** Turns a finished tracker into a phase result. */
export function summarise(
  ctx: ScenarioContext,
  phase: string,
  tracker: Tracker,
  sendingMs: number,
  server: ResourceSummary | undefined,
  harnessCpuPercent: number,
  rate?: number,
): PhaseResult {
  const counts = tracker.counts();
  const spanS = (tracker.lastDeliveryAt - tracker.firstSendAt) / 1000;
  const acceptSpanS = (tracker.lastAcceptAt - tracker.firstSendAt) / 1000;
  const result: PhaseResult = {
    phase,
    system: ctx.system.name,
    ...(rate === undefined ? {} : { rate }),
    ...counts,
    sendingS: Math.round(sendingMs) / 1000,
    msgsPerSec: spanS > 0 ? Math.round(counts.delivered / spanS) : 0,
    acceptedPerSec: acceptSpanS > 0 ? Math.round(counts.accepted / acceptSpanS) : 0,
    ...(server ? { server } : {}),
    harnessCpuPercent,
  };
  // Cost per message: the nodes' CPU time, and with it the backing services' (machine-wide).
  if (server && counts.delivered > 0 && Number.isFinite(server.cpuSeconds)) {
    const per1000 = (seconds: number) => Math.round((seconds / counts.delivered) * 1000 * 1000) / 1000;
    result.extra = {
      ...result.extra,
      cpuSecondsPer1000: per1000(server.cpuSeconds),
      ...(ctx.options.stack === "services"
        ? { withServicesCpuSecondsPer1000: per1000(server.cpuSeconds + server.servicesCpuSeconds) }
        : {}),
    };
  }
  ctx.progress.note(
    `${ctx.system.name} ${phase}: sent ${counts.sent} accepted ${counts.accepted} delivered ${counts.delivered} ` +
      `lost ${counts.lost} dup ${counts.duplicated} → ${result.msgsPerSec} msgs/s, ` +
      `p99 delivered ${counts.latencyMs.delivered.p99} ms`,
  );
  return result;
}

/** Waits `options.settleS` after warm-up, so measurement starts in the steady state. */
export async function settleDown(ctx: ScenarioContext): Promise<void> {
  const seconds = ctx.options.settleS;
  if (seconds <= 0 || ctx.system.name === "relay") return;
  ctx.progress.note(
    `${ctx.system.name}: waiting ${seconds} s for the actors' post-activation recovery window`,
  );
  await Bun.sleep(seconds * 1000);
}
