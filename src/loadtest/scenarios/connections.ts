import type { PhaseResult, ScenarioContext, System } from "../phase.ts";
import { summarise } from "../phase.ts";
import { inPool } from "../pool.ts";
import { selfCpu } from "../process-stats.ts";
import { LoadSocket } from "../socket.ts";
import { Tracker } from "../tracker.ts";

/** File descriptors one process may hold here (hard limit); the harness keeps some for itself. */
const FD_LIMIT = 20_000;
const FD_RESERVE = 500;
const SETTLE_MS = 3000;
/** After a collection, RSS is read every RSS_POLL_MS until RSS_STEADY_READINGS in a row span ≤ RSS_STEADY_BYTES. */
const RSS_POLL_MS = 250;
const RSS_STEADY_READINGS = 4;
const RSS_STEADY_BYTES = 256 * 1024;
const RSS_SETTLE_LIMIT_MS = 15_000;

/**
 * Before a reading the server must have finished bringing the sockets online (each connect's drain,
 * presence lease and actor activation run after the socket opened): it counts as done once it used
 * at most QUIET_CPU_S of CPU in each of QUIET_WINDOWS windows of QUIET_WINDOW_MS in a row.
 */
const QUIET_WINDOW_MS = 1000;
const QUIET_WINDOWS = 2;
const QUIET_CPU_S = 0.05;
const QUIET_LIMIT_MS = 120_000;

/**
 * Waits until the server processes are quiet (see QUIET_CPU_S) or QUIET_LIMIT_MS passed; returns
 * the seconds waited. Returns at once when their CPU time cannot be read.
 */
async function waitForQuiet(system: System): Promise<number> {
  const started = performance.now();
  let quietWindows = 0;
  let used = await system.sampler.cpuSecondsNow();
  while (quietWindows < QUIET_WINDOWS && performance.now() - started < QUIET_LIMIT_MS) {
    if (Number.isNaN(used)) break;
    await Bun.sleep(QUIET_WINDOW_MS);
    const now = await system.sampler.cpuSecondsNow();
    quietWindows = now - used <= QUIET_CPU_S ? quietWindows + 1 : 0;
    used = now;
  }
  return Math.round((performance.now() - started) / 100) / 10;
}

/** The server's memory at one point of the ramp. */
interface MemoryReading {
  /** RSS as found, before any collection asked for by the harness (bytes). */
  uncollectedRss: number;
  /** RSS after a full collection and once it stopped moving; `uncollectedRss` when no collection was possible. */
  rss: number;
  /** Live JS heap bytes and objects after the collection, and objects by type; absent without one. */
  heapBytes?: number;
  /** Bytes the JSC heap keeps reserved after the collection (live objects, free cells beside them; not all resident). */
  heapCapacityBytes?: number;
  objects?: number;
  types?: Record<string, number>;
  gcMs?: number;
  /** Seconds waited for the server to go quiet before the reading. */
  quietWaitS: number;
}

/**
 * Reads the server's memory so that two readings differ by what the server holds, not by when its
 * collector last ran: RSS as found, then a full collection in every server process (gc-hook.ts),
 * then RSS polled until RSS_STEADY_READINGS readings in a row lie within RSS_STEADY_BYTES (the
 * allocators hand freed pages back a little after the collection) or RSS_SETTLE_LIMIT_MS passed.
 */
async function readMemory(system: System): Promise<MemoryReading> {
  const quietWaitS = await waitForQuiet(system);
  const uncollectedRss = await system.sampler.rssNow();
  if (!system.collectGarbage) return { uncollectedRss, rss: uncollectedRss, quietWaitS };
  const heaps = await system.collectGarbage();
  const recent: number[] = [];
  const deadline = performance.now() + RSS_SETTLE_LIMIT_MS;
  for (;;) {
    recent.push(await system.sampler.rssNow());
    if (recent.length > RSS_STEADY_READINGS) recent.shift();
    const steady =
      recent.length === RSS_STEADY_READINGS && Math.max(...recent) - Math.min(...recent) <= RSS_STEADY_BYTES;
    if (steady || performance.now() >= deadline) break;
    await Bun.sleep(RSS_POLL_MS);
  }
  const types: Record<string, number> = {};
  for (const h of heaps)
    for (const [type, count] of Object.entries(h.types)) types[type] = (types[type] ?? 0) + count;
  return {
    uncollectedRss,
    rss: recent[recent.length - 1] as number,
    heapBytes: heaps.reduce((sum, h) => sum + h.heapBytes, 0),
    heapCapacityBytes: heaps.reduce((sum, h) => sum + h.heapCapacityBytes, 0),
    objects: heaps.reduce((sum, h) => sum + h.objects, 0),
    types,
    gcMs: Math.max(...heaps.map((h) => h.gcMs)),
    quietWaitS,
  };
}

/** Object types whose count grew by at least half an object per connection between two readings, most first. */
function grownTypes(from: MemoryReading, to: MemoryReading, connections: number): string {
  if (!from.types || !to.types) return "";
  return Object.entries(to.types)
    .map(([type, count]) => [type, (count - (from.types?.[type] ?? 0)) / connections] as const)
    .filter(([, perConnection]) => perConnection >= 0.5)
    .sort((a, b) => b[1] - a[1])
    .map(([type, perConnection]) => `${type} ${perConnection.toFixed(1)}`)
    .join(", ");
}

const perConnection = (from: number | undefined, to: number | undefined, n: number) =>
  from === undefined || to === undefined ? undefined : Math.round((to - from) / n);
const megabytes = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;

/**
 * Connection storm: ramp to N idle sockets (one user — and so one user actor — per socket unless
 * `--users` is smaller), then memory per connection = (RSS with N − RSS with 0) / N, and the
 * marginal figure = (RSS with N − RSS with N/2) / (N/2). Each RSS reading waits for the server to go
 * quiet (`waitForQuiet`), then follows a full collection in the server processes and waits for RSS
 * to settle (`readMemory`), so the figures
 * count what the server holds; the same figures read without the collection are reported as
 * `…BeforeGc`, and the JS heap's live bytes and reserved size (`heapCapacity…`, not all of it
 * resident) as `heap…`. RSS still keeps what the allocators reserved during the ramp's churn, so the
 * RSS figures vary between runs of the same code (docs/BENCHMARKS.md); the live heap does not.
 */
export async function connections(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const { options, system, progress } = ctx;
  const n = options.connections;
  if (n > FD_LIMIT - FD_RESERVE) {
    throw new Error(
      `--connections ${n} exceeds what one client process can open here (open-file limit ${FD_LIMIT}); ` +
        "run several harness processes or use at most 19,500",
    );
  }
  const accounts = options.users > 0 ? Math.min(options.users, n) : n;
  let created = 0;
  const t0 = performance.now();
  progress.start(`${system.name} accounts`, () => `${created}/${n} devices created`);
  const devices =
    accounts >= n
      ? await system.target.createUsers(n, (d) => {
          created = d;
        })
      : await system.target.createDevices(n, accounts, (d) => {
          created = d;
        });
  progress.stop();
  progress.note(
    `${system.name}: ${n} devices in ${accounts} accounts ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  await Bun.sleep(SETTLE_MS);
  await system.sampler.start();
  const before = await readMemory(system);
  const rssBefore = before.rss;
  const cpu = selfCpu();
  let open = 0;
  progress.start(`${system.name} ramp`, () => `${open}/${n} connections`);
  const sockets: LoadSocket[] = [];
  // Two halves: the second half's RSS growth is the marginal cost of a connection, without the
  // allocator's high-water mark from the first half's set-up churn (upgrades, queries, channels).
  const half = Math.floor(n / 2);
  let atHalf = before;
  let rampMs = 0;
  try {
    for (const [from, to] of [
      [0, half],
      [half, n],
    ] as const) {
      const started = performance.now();
      sockets.push(
        ...(await inPool(
          to - from,
          128,
          (i) => LoadSocket.open(system.target, devices[from + i] as (typeof devices)[number]),
          (d) => {
            open = from + d;
          },
        )),
      );
      rampMs += performance.now() - started;
      // `--settle`: how long the sockets stay open before RSS is read (long enough to profile the server).
      await Bun.sleep(options.settleS * 1000);
      if (from === 0) atHalf = await readMemory(system);
    }
  } finally {
    progress.stop();
  }
  const after = await readMemory(system);
  const rssAfter = after.rss;
  const stillOpen = sockets.filter((s) => !s.closed).length;
  const closedWith: Record<string, number> = {};
  for (const s of sockets) {
    if (s.closedWith) closedWith[s.closedWith] = (closedWith[s.closedWith] ?? 0) + 1;
  }
  const server = await system.sampler.finish();
  const result = summarise(ctx, `${n} idle`, new Tracker(), rampMs, server, cpu());
  result.extra = {
    connections: stillOpen,
    closedDuringRun: n - stillOpen,
    rampPerSec: Math.round(n / (rampMs / 1000)),
    rssBeforeMb: megabytes(rssBefore),
    rssHalfMb: megabytes(atHalf.rss),
    rssAfterMb: megabytes(rssAfter),
    ...(rssBefore > 0
      ? {
          bytesPerConnection: Math.round((rssAfter - rssBefore) / n),
          marginalBytesPerConnection: Math.round((rssAfter - atHalf.rss) / (n - half)),
        }
      : {}),
  };
  const optional: Record<string, number | undefined> = system.collectGarbage
    ? {
        bytesPerConnectionBeforeGc: perConnection(before.uncollectedRss, after.uncollectedRss, n),
        marginalBytesPerConnectionBeforeGc: perConnection(
          atHalf.uncollectedRss,
          after.uncollectedRss,
          n - half,
        ),
        heapBytesPerConnection: perConnection(before.heapBytes, after.heapBytes, n),
        heapMarginalBytesPerConnection: perConnection(atHalf.heapBytes, after.heapBytes, n - half),
        heapCapacityMarginalBytesPerConnection: perConnection(
          atHalf.heapCapacityBytes,
          after.heapCapacityBytes,
          n - half,
        ),
        objectsPerConnection:
          before.objects === undefined || after.objects === undefined
            ? undefined
            : Math.round(((after.objects - before.objects) / n) * 10) / 10,
        heapAfterMb: after.heapBytes === undefined ? undefined : megabytes(after.heapBytes),
        heapCapacityHalfMb:
          atHalf.heapCapacityBytes === undefined ? undefined : megabytes(atHalf.heapCapacityBytes),
        heapCapacityAfterMb:
          after.heapCapacityBytes === undefined ? undefined : megabytes(after.heapCapacityBytes),
        gcMsAtN: after.gcMs,
        quietWaitHalfS: atHalf.quietWaitS,
        quietWaitAtNS: after.quietWaitS,
      }
    : {};
  for (const [key, value] of Object.entries(optional)) if (value !== undefined) result.extra[key] = value;
  progress.note(
    `${system.name}: ${stillOpen}/${n} open, ${result.extra.bytesPerConnection ?? "?"} bytes of server RSS each ` +
      `(${result.extra.marginalBytesPerConnection ?? "?"} for each of the second half)`,
  );
  if (after.types) {
    progress.note(
      `${system.name}: JS heap ${megabytes(before.heapBytes ?? 0)} → ${megabytes(after.heapBytes ?? 0)} MB after full collections; ` +
        `object types grown per connection: ${grownTypes(before, after, n) || "none ≥ 0.5"}`,
    );
  }
  if (stillOpen < n) progress.note(`${system.name}: closed during the run: ${JSON.stringify(closedWith)}`);
  await inPool(sockets.length, 256, (i) => (sockets[i] as LoadSocket).close());
  return [result];
}
