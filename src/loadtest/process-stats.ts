import { readdirSync, readFileSync } from "node:fs";

/** One reading of a server process: resident memory and CPU time consumed so far. */
export interface ProcessReading {
  rssBytes: number;
  cpuSeconds: number;
  at: number;
}

/** Where readings come from: /proc of a process we spawned, or a node's Prometheus `/metrics`. */
export interface ProcessProbe {
  read(): Promise<ProcessReading | undefined>;
}

const CLOCK_TICKS = 100; // USER_HZ on Linux

/** Reads /proc/<pid>/status (VmRSS) and /proc/<pid>/stat (utime + stime). */
export function procProbe(pid: number): ProcessProbe {
  return {
    async read() {
      try {
        const status = readFileSync(`/proc/${pid}/status`, "utf8");
        const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const ticks = Number(fields[11]) + Number(fields[12]);
        return { rssBytes: rssKb * 1024, cpuSeconds: ticks / CLOCK_TICKS, at: performance.now() };
      } catch {
        return undefined;
      }
    },
  };
}

/** Reads `clearbox_process_resident_memory_bytes` and `clearbox_process_cpu_seconds_total` from the admin listener. */
export function metricsProbe(adminUrl: string, token: string): ProcessProbe {
  return {
    async read() {
      try {
        const res = await fetch(new URL("/metrics", adminUrl), {
          headers: { authorization: `Bearer ${token}` },
          signal: AbortSignal.timeout(2000),
        });
        if (!res.ok) return undefined;
        const text = await res.text();
        const rss = /^clearbox_process_resident_memory_bytes(?:\{[^}]*\})? ([\d.e+]+)/m.exec(text);
        const cpu = /^clearbox_process_cpu_seconds_total(?:\{[^}]*\})? ([\d.e+]+)/m.exec(text);
        if (!rss) return undefined;
        return {
          rssBytes: Number(rss[1]),
          cpuSeconds: Number(cpu?.[1] ?? Number.NaN),
          at: performance.now(),
        };
      } catch {
        return undefined;
      }
    },
  };
}

/** Server resources over one measured phase. */
export interface ResourceSummary {
  /** Resident memory at the end of the phase, and the highest seen during it (MB). */
  rssMb: number;
  peakRssMb: number;
  /** Average CPU use over the phase, in percent of one core (200 = both cores of this machine). */
  cpuPercent: number;
  /** CPU time the probed (ClearBox) processes used over the phase, in seconds. */
  cpuSeconds: number;
  /**
   * CPU time every PostgreSQL, RabbitMQ (beam.smp) and Redis process on this machine used over
   * the phase, in seconds: the services the services stack runs on. Machine-wide, so other users
   * of the same servers are counted too; processes that started or ended during the phase are not.
   */
  servicesCpuSeconds: number;
}

/** Names (`comm`) of the backing services' processes, whose CPU time a phase also reports. */
const SERVICE_COMMS = new Set(["postgres", "beam.smp", "redis-server"]);

/** CPU seconds so far of every process named in SERVICE_COMMS, by pid, from /proc (empty when unreadable). */
export function servicesCpuSeconds(): Map<string, number> {
  const seconds = new Map<string, number>();
  let pids: string[] = [];
  try {
    pids = readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  } catch {
    return seconds;
  }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      if (!SERVICE_COMMS.has(comm)) continue;
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      seconds.set(pid, (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS);
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return seconds;
}

/** CPU seconds the service processes alive at both readings used between them (a process that came or went is left out). */
function servicesDelta(before: Map<string, number>, after: Map<string, number>): number {
  let delta = 0;
  for (const [pid, seconds] of after) {
    const start = before.get(pid);
    if (start !== undefined && seconds >= start) delta += seconds - start;
  }
  return delta;
}

/** Samples several processes (one per node) every `intervalMs` and summarises a phase. */
export class ResourceSampler {
  private timer: ReturnType<typeof setInterval> | undefined;
  private first: (ProcessReading | undefined)[] = [];
  private last: (ProcessReading | undefined)[] = [];
  private peakRss = 0;
  private servicesAtStart = new Map<string, number>();

  constructor(private readonly probes: ProcessProbe[]) {}

  get available(): boolean {
    return this.probes.length > 0;
  }

  /** Starts a phase: remembers where CPU time stood. */
  async start(intervalMs = 500): Promise<void> {
    this.stop();
    this.first = await this.readAll();
    this.servicesAtStart = servicesCpuSeconds();
    this.last = this.first;
    this.peakRss = this.totalRss(this.first);
    this.timer = setInterval(() => void this.sample(), intervalMs);
  }

  private async readAll() {
    return Promise.all(this.probes.map((p) => p.read()));
  }

  private totalRss(readings: (ProcessReading | undefined)[]) {
    return readings.reduce((sum, r) => sum + (r?.rssBytes ?? 0), 0);
  }

  private async sample() {
    this.last = await this.readAll();
    this.peakRss = Math.max(this.peakRss, this.totalRss(this.last));
  }

  /** The latest total RSS of all probed processes, in bytes (0 when unavailable). */
  async rssNow(): Promise<number> {
    await this.sample();
    return this.totalRss(this.last);
  }

  /** Ends a phase and summarises it; undefined when nothing could be read. */
  async finish(): Promise<ResourceSummary | undefined> {
    this.stop();
    if (!this.available) return undefined;
    await this.sample();
    let cpu = 0;
    let cpuSeconds = 0;
    let anyCpu = false;
    for (let i = 0; i < this.probes.length; i++) {
      const a = this.first[i];
      const b = this.last[i];
      if (!a || !b || b.at <= a.at || Number.isNaN(b.cpuSeconds)) continue;
      cpu += ((b.cpuSeconds - a.cpuSeconds) / ((b.at - a.at) / 1000)) * 100;
      cpuSeconds += b.cpuSeconds - a.cpuSeconds;
      anyCpu = true;
    }
    const rss = this.totalRss(this.last);
    if (rss === 0) return undefined;
    return {
      rssMb: mb(rss),
      peakRssMb: mb(this.peakRss),
      cpuPercent: anyCpu ? Math.round(cpu) : Number.NaN,
      cpuSeconds: anyCpu ? Math.round(cpuSeconds * 100) / 100 : Number.NaN,
      servicesCpuSeconds: Math.round(servicesDelta(this.servicesAtStart, servicesCpuSeconds()) * 100) / 100,
    };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

const mb = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;

/** CPU use of the harness process itself over a phase, in percent of one core. */
export function selfCpu(): () => number {
  const start = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const used = process.cpuUsage(start);
    const ms = performance.now() - t0;
    return ms <= 0 ? 0 : Math.round(((used.user + used.system) / 1000 / ms) * 100);
  };
}
