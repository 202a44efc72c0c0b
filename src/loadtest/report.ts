import type { LatencySummary } from "./histogram.ts";
import type { PhaseResult } from "./phase.ts";
import type { RunResult } from "./run.ts";

/** The one JSON object `--json` prints last: totals over ClearBox's phases, figures of the main phase. */
export interface JsonSummary {
  scenario: string;
  sent: number;
  accepted: number;
  rejected: number;
  /** `busy` answers, each sent again (flow control). */
  busy: number;
  errors: number;
  delivered: number;
  lost: number;
  duplicated: number;
  unexpected: number;
  corrupted: number;
  msgsPerSec: number;
  latencyMs: Pick<LatencySummary, "p50" | "p90" | "p99" | "max">;
  acceptedLatencyMs: Pick<LatencySummary, "p50" | "p90" | "p99" | "max">;
  server: { rssMb: number; peakRssMb: number; cpuPercent: number } | "unavailable";
  /** ClearBox's figure over the relay's, for the same phase of the same run. */
  vsRelay: Record<string, number>;
  phases: (PhaseResult & { vsRelay?: Record<string, number> })[];
  baseline: PhaseResult[];
  servers: RunResult["servers"];
  machine: RunResult["machine"];
  serverProblems: number;
  /** The first few warning/error lines the servers logged. */
  firstServerProblems?: string[];
  startedAt: string;
  durationS: number;
}

const pick = (l: LatencySummary) => ({ p50: l.p50, p90: l.p90, p99: l.p99, max: l.max });
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || !b ? undefined : Math.round((a / b) * 1000) / 1000;

/** Ratios of a ClearBox phase to the relay's phase of the same name. */
export function vsRelay(phase: PhaseResult, baseline: PhaseResult[]): Record<string, number> | undefined {
  const relay = baseline.find((b) => b.phase === phase.phase);
  if (!relay) return undefined;
  const out: Record<string, number | undefined> = {
    msgsPerSec: ratio(phase.msgsPerSec, relay.msgsPerSec),
    deliveredP99: ratio(phase.latencyMs.delivered.p99, relay.latencyMs.delivered.p99),
    allDeliveredP99: ratio(phase.latencyMs.allDelivered.p99, relay.latencyMs.allDelivered.p99),
    bytesPerConnection: ratio(phase.extra?.bytesPerConnection, relay.extra?.bytesPerConnection),
    marginalBytesPerConnection: ratio(
      phase.extra?.marginalBytesPerConnection,
      relay.extra?.marginalBytesPerConnection,
    ),
  };
  return Object.fromEntries(
    Object.entries(out).filter(([, v]) => v !== undefined && Number.isFinite(v)),
  ) as Record<string, number>;
}

/** The phase whose throughput and latency headline the run (the first one after warm-up). */
function mainPhase(phases: PhaseResult[]): PhaseResult | undefined {
  return phases.find((p) => p.phase !== "warm-up") ?? phases[0];
}

export function jsonSummary(run: RunResult): JsonSummary {
  const sum = (key: keyof PhaseResult) => run.phases.reduce((n, p) => n + (p[key] as number), 0);
  const main = mainPhase(run.phases);
  const phases = run.phases.map((p) => {
    const r = vsRelay(p, run.baseline);
    return r ? { ...p, vsRelay: r } : p;
  });
  const empty = { count: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  return {
    scenario: run.scenario,
    sent: sum("sent"),
    accepted: sum("accepted"),
    rejected: sum("rejected"),
    busy: sum("busy"),
    errors: sum("errors"),
    delivered: sum("delivered"),
    lost: sum("lost"),
    duplicated: sum("duplicated"),
    unexpected: sum("unexpected"),
    corrupted: sum("corrupted"),
    msgsPerSec: main?.msgsPerSec ?? 0,
    latencyMs: pick(main?.latencyMs.delivered ?? empty),
    acceptedLatencyMs: pick(main?.latencyMs.accepted ?? empty),
    server: main?.server ?? "unavailable",
    vsRelay: (main && vsRelay(main, run.baseline)) ?? {},
    phases,
    baseline: run.baseline,
    servers: run.servers,
    machine: run.machine,
    serverProblems: run.serverProblems.length,
    ...(run.serverProblems.length > 0 ? { firstServerProblems: run.serverProblems.slice(0, 5) } : {}),
    startedAt: run.startedAt,
    durationS: run.durationS,
  };
}

const fmt = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? "–" : String(n));

/** The human-readable report: one row per phase, relay rows first, then ClearBox with ratios. */
export function textReport(run: RunResult): string {
  const header = [
    "system",
    "phase",
    "sent",
    "accepted",
    "delivered",
    "lost",
    "dup",
    "msgs/s",
    "×relay",
    "accept p50/p99 ms",
    "deliver p50/p90/p99/max ms",
    "all-delivered p99 ms",
    "server RSS MB",
    "server CPU %",
    "harness CPU %",
    "other",
  ];
  const row = (p: PhaseResult) => {
    const r = p.system === "clearbox" ? vsRelay(p, run.baseline) : undefined;
    const a = p.latencyMs.accepted;
    const d = p.latencyMs.delivered;
    return [
      p.system,
      p.rate === undefined ? p.phase : `${p.phase} (${p.rate}/s)`,
      fmt(p.sent),
      fmt(p.accepted),
      fmt(p.delivered),
      fmt(p.lost),
      fmt(p.duplicated),
      fmt(p.msgsPerSec),
      fmt(r?.msgsPerSec ?? r?.bytesPerConnection),
      `${a.p50}/${a.p99}`,
      `${d.p50}/${d.p90}/${d.p99}/${d.max}`,
      fmt(p.latencyMs.allDelivered.p99),
      p.server ? `${p.server.rssMb} (peak ${p.server.peakRssMb})` : "unavailable",
      fmt(p.server?.cpuPercent),
      fmt(p.harnessCpuPercent),
      [
        ...(p.busy > 0 ? [`busy=${p.busy}`] : []),
        ...Object.entries(p.extra ?? {}).map(([k, v]) => `${k}=${v}`),
      ].join(" "),
    ];
  };
  const rows = [header, ...run.baseline.map(row), ...run.phases.map(row)];
  const lines = rows.map((cells) => `| ${cells.join(" | ")} |`);
  lines.splice(1, 0, `| ${header.map(() => "---").join(" | ")} |`);
  const s = run.servers;
  const intro = [
    `scenario ${run.scenario}: ${s.spawned ? `${s.nodes} spawned node(s), ${s.stack} stack` : `given ${s.urls.join(", ")}`}; ` +
      `${run.machine.cpus} CPUs, load average before ${run.machine.loadavg.join(" ")}, Bun ${run.machine.bun}, ${run.durationS} s`,
  ];
  if (run.serverProblems.length > 0) {
    intro.push(
      `server logged ${run.serverProblems.length} warning(s)/error(s); first: ${run.serverProblems[0]}`,
    );
  }
  return [...intro, ...lines].join("\n");
}
