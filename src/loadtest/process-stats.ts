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

/** What every node sent to the others over the node transport (RabbitMQ), summed over the nodes. */
export interface TransportCounts {
  transfers: number;
  frames: number;
}

/**
 * Reads `clearbox_transport_transfers_sent_total` and `…_frames_sent_total` from each node's admin
 * listener and sums them; undefined when a node did not answer (its counts would be missing).
 */
export async function transportCounts(
  admins: readonly { adminUrl: string; adminToken: string }[],
): Promise<TransportCounts | undefined> {
  const read = async ({ adminUrl, adminToken }: { adminUrl: string; adminToken: string }) => {
    const res = await fetch(new URL("/metrics", adminUrl), {
      headers: { authorization: `Bearer ${adminToken}` },
      signal: AbortSignal.timeout(2000),
    });
    if (!res.ok) return undefined;
    const text = await res.text();
    const value = (name: string) =>
      Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([\\d.e+]+)`, "m").exec(text)?.[1] ?? Number.NaN);
    return {
      transfers: value("clearbox_transport_transfers_sent_total"),
      frames: value("clearbox_transport_frames_sent_total"),
    };
  };
  try {
    const counts = await Promise.all(admins.map(read));
    let transfers = 0;
    let frames = 0;
    for (const c of counts) {
      if (!c || Number.isNaN(c.transfers) || Number.isNaN(c.frames)) return undefined;
      transfers += c.transfers;
      frames += c.frames;
    }
    return { transfers, frames };
  } catch {
    return undefined;
  }
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
   * of the same servers are counted too. A process that started during the phase (a PostgreSQL
   * backend for a pool connection opened under load) counts with all of its CPU time; one that
   * ended during it is not counted.
   */
  servicesCpuSeconds: number;
}

/** Names (`comm`) of the backing services' processes, whose CPU time a phase also reports. */
const SERVICE_COMMS = new Set(["postgres", "beam.smp", "redis-server"]);

/** One service process in a reading: its CPU seconds so far and its parent's pid. */
export interface ServiceProcess {
  seconds: number;
  parent: string;
}

/**
 * CPU seconds so far of every process named in SERVICE_COMMS, keyed by pid and start time (so a
 * reused pid is another process), from /proc (empty when unreadable).
 */
export function servicesCpuSeconds(): Map<string, ServiceProcess> {
  const seconds = new Map<string, ServiceProcess>();
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
      // ppid (4th field), utime and stime (14th, 15th) and starttime (22nd).
      seconds.set(`${pid}@${fields[19]}`, {
        seconds: (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS,
        parent: fields[1] as string,
      });
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return seconds;
}

/**
 * CPU seconds the service processes used between two readings: the difference for a process in
 * both, and all of it for one that a process of the first reading started in between (a
 * PostgreSQL backend forked for a pool connection opened under load; left out, they made the
 * services' share look smaller the more connections a phase opened). A service started from
 * elsewhere in between (another session's own broker) is left out, and one that ended is lost.
 */
export function servicesDelta(
  before: Map<string, ServiceProcess>,
  after: Map<string, ServiceProcess>,
): number {
  const parents = new Set([...before.keys()].map((key) => key.slice(0, key.indexOf("@"))));
  let delta = 0;
  for (const [key, { seconds, parent }] of after) {
    const start = before.get(key)?.seconds ?? (parents.has(parent) ? 0 : undefined);
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
  private servicesAtStart = new Map<string, ServiceProcess>();

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

  /** CPU seconds all probed processes have used so far (NaN when a probe cannot say). */
  async cpuSecondsNow(): Promise<number> {
    await this.sample();
    return this.last.reduce((sum, r) => sum + (r?.cpuSeconds ?? Number.NaN), 0);
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
