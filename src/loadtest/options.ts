import { parseArgs } from "node:util";

export const SCENARIOS = [
  "smoke",
  "one-to-one",
  "offline",
  "fanout",
  "connections",
  "cluster",
  "abuse",
  "chaos",
] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/** The backing services the chaos scenario can kill (`all`: one after the other). */
export const CHAOS_SERVICES = ["rabbitmq", "redis", "postgres", "all"] as const;
export type ChaosService = (typeof CHAOS_SERVICES)[number];

/** Which stores a spawned node uses: the embedded default, or PostgreSQL + Redis + RabbitMQ. */
export type Stack = "embedded" | "services";

/** Everything a run needs, after defaults for its scenario are filled in. */
export interface LoadtestOptions {
  scenario: ScenarioName;
  /** Base URLs of running nodes; empty means the harness spawns its own. */
  urls: string[];
  stack: Stack;
  /** Nodes to spawn (the cluster scenario uses 3). */
  nodes: number;
  adminUrl?: string;
  adminToken?: string;
  /** Virtual users (one device each); 1:1 pairs them up as sender → recipient. */
  users: number;
  /** Messages to send in total (1:1, offline, smoke); the run also stops after `durationS`. */
  messages: number;
  durationS: number;
  /** Messages per second for the whole run, or flat out (`undefined`); "half" = half the flat-out peak. */
  rate?: number | "half";
  /** Unanswered sends each sender keeps in flight when flat out. */
  window: number;
  /** Payload bytes per message (before base64). */
  size: number;
  groupSizes: number[];
  groupMessages: number;
  connections: number;
  e2ee: boolean;
  json: boolean;
  baseline: boolean;
  /** Account creations in flight at once (each costs the server an argon2id hash). */
  concurrency: number;
  drainTimeoutS: number;
  /**
   * Pause after connecting (and warming up) before measuring: a user actor reads the log on every
   * deliver for 9 heartbeats after it activates (crash recovery), which is not the steady state.
   */
  settleS: number;
  /** Milliseconds a device gathers received ids before acking them in one frame. */
  ackDelayMs: number;
  /** HTTP loops of the abuse scenario's attacker, each with one hostile request in flight. */
  abusers: number;
  /** Chaos: the service to kill -9 (`all`: RabbitMQ, then Redis, then PostgreSQL). */
  service: ChaosService;
  /** Chaos: seconds a killed service stays down before it is started again. */
  downS: number;
  /** Directory for CPU profiles of spawned nodes (`bun --cpu-prof`), written when they stop. */
  profileDir?: string;
  progress: boolean;
}

/** An option that does not make sense, with a message saying what to pass instead. */
export class OptionsError extends Error {
  override name = "OptionsError";
}

const DEFAULTS: Record<ScenarioName, Partial<LoadtestOptions>> = {
  smoke: { users: 4, messages: 300, durationS: 10, window: 8, baseline: false, settleS: 0 },
  "one-to-one": { users: 200, messages: 2_000_000, durationS: 10, window: 16, rate: "half", baseline: true },
  offline: { users: 100, messages: 20_000, durationS: 60, window: 32, baseline: false, settleS: 0 },
  fanout: { users: 0, groupSizes: [100, 1000], groupMessages: 20, baseline: true },
  connections: { connections: 2000, users: 0, baseline: true, settleS: 3 },
  cluster: {
    users: 200,
    messages: 2_000_000,
    durationS: 10,
    window: 16,
    rate: "half",
    nodes: 3,
    stack: "services",
  },
  abuse: { users: 20, messages: 2_000_000, durationS: 10, window: 16, rate: 200, baseline: false },
  chaos: {
    users: 30,
    messages: 2_000_000,
    durationS: 10,
    rate: 100,
    nodes: 3,
    stack: "services",
    baseline: false,
    drainTimeoutS: 90,
  },
};

export const USAGE = `usage: npm run loadtest -- <scenario> [options]
scenarios: ${SCENARIOS.join(", ")}
  --url <base-url>[,<base-url>...]  running node(s) to test; omitted → the harness spawns its own
  --spawn                           spawn nodes even if --url is given (the --url is then ignored)
  --stack embedded|services         spawned nodes: PGlite + SQLite log (default) or PostgreSQL+Redis+RabbitMQ
  --nodes <n>                       nodes to spawn (cluster: 3)
  --admin-url <url> --admin-token <t>  read RSS/CPU of a remote node from /metrics
  --users <n>                       virtual users (1:1 pairs them: n/2 senders)
  --messages <n>  --duration <s>    stop sending after n messages or s seconds
  --rate <msgs/s>|half|max          fixed rate; half = half of a flat-out run's peak (1:1 default)
  --window <n>                      sends in flight per sender when flat out
  --size <bytes>                    payload size
  --group-sizes 100,1000,10000      fan-out group sizes  --group-messages <n>
  --connections <n>                 idle connections for the connection storm
  --abusers <n>                     abuse: HTTP loops sending hostile requests (default 4)
  --service rabbitmq|redis|postgres|all  chaos: the service to kill -9 (default all, one after another)
  --down <s>                        chaos: seconds the killed service stays down (default 5); the
                                    chaos run sends at --rate for --duration s before the kill and
                                    again after the restart, on private service instances
  --e2ee                            real Signal sessions (1:1 and smoke) instead of plain payloads
  --baseline / --no-baseline        also measure the raw Bun relay in the same run
  --concurrency <n>                 account creations in flight
  --drain-timeout <s>               how long to wait for deliveries after sending stops
  --ack-delay <ms>                  how long a device gathers ids before one ack frame (default 5)
  --profile <dir>                   spawned nodes run under bun --cpu-prof, profiles go to <dir>
  --settle <s>                      pause between warm-up and measuring (actors' recovery window);
                                    connections: how long the sockets stay open before RSS is read
  --json                            last stdout line: one JSON object with the results
  --no-progress                     no live progress line on stderr`;

function int(name: string, raw: string | undefined, fallback: number, min = 0): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min)
    throw new OptionsError(`--${name} expects a number ≥ ${min}, got ${raw}`);
  return Math.floor(value);
}

/** Parses `argv` (without the runtime and script) into options, filling in the scenario's defaults. */
export function parseOptions(argv: string[]): LoadtestOptions {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    allowNegative: true,
    options: {
      url: { type: "string" },
      spawn: { type: "boolean" },
      stack: { type: "string" },
      nodes: { type: "string" },
      "admin-url": { type: "string" },
      "admin-token": { type: "string" },
      users: { type: "string" },
      messages: { type: "string" },
      duration: { type: "string" },
      rate: { type: "string" },
      window: { type: "string" },
      size: { type: "string" },
      "group-sizes": { type: "string" },
      "group-messages": { type: "string" },
      connections: { type: "string" },
      abusers: { type: "string" },
      service: { type: "string" },
      down: { type: "string" },
      e2ee: { type: "boolean" },
      json: { type: "boolean" },
      baseline: { type: "boolean" },
      concurrency: { type: "string" },
      "drain-timeout": { type: "string" },
      settle: { type: "string" },
      "ack-delay": { type: "string" },
      profile: { type: "string" },
      progress: { type: "boolean" },
    },
  });
  const scenario = positionals[0] as ScenarioName | undefined;
  if (!scenario || !SCENARIOS.includes(scenario)) {
    throw new OptionsError(`expected a scenario (${SCENARIOS.join(", ")}), got ${scenario ?? "none"}`);
  }
  const d = DEFAULTS[scenario];
  const stack = (values.stack ?? d.stack ?? "embedded") as Stack;
  if (stack !== "embedded" && stack !== "services") {
    throw new OptionsError(`--stack expects embedded or services, got ${values.stack}`);
  }
  let rate: LoadtestOptions["rate"] = d.rate;
  if (values.rate === "half") rate = "half";
  else if (values.rate === "max") rate = undefined;
  else if (values.rate !== undefined) rate = int("rate", values.rate, 0, 1);
  const service = (values.service ?? "all") as ChaosService;
  if (!CHAOS_SERVICES.includes(service)) {
    throw new OptionsError(`--service expects ${CHAOS_SERVICES.join(", ")}, got ${values.service}`);
  }
  if (scenario === "chaos" && (values.url || stack !== "services" || rate === undefined || rate === "half")) {
    throw new OptionsError(
      "chaos spawns its own nodes on the services stack at a fixed --rate: no --url, --stack embedded, or --rate half/max",
    );
  }
  const urls = values.spawn ? [] : (values.url ?? "").split(",").filter(Boolean);
  for (const url of urls) {
    if (!/^https?:\/\//.test(url)) throw new OptionsError(`--url expects http(s)://host:port, got ${url}`);
  }
  const groupSizes = (values["group-sizes"] ?? (d.groupSizes ?? [100]).join(","))
    .split(",")
    .map((s) => int("group-sizes", s, 0, 2));
  const users = int("users", values.users, d.users ?? 4, 0);
  if (scenario !== "fanout" && scenario !== "connections" && users < 2) {
    throw new OptionsError("--users must be at least 2 (a sender and a recipient)");
  }
  return {
    scenario,
    urls,
    stack,
    nodes: int("nodes", values.nodes, d.nodes ?? 1, 1),
    adminUrl: values["admin-url"],
    adminToken: values["admin-token"],
    users,
    messages: int("messages", values.messages, d.messages ?? 1000, 1),
    durationS: int("duration", values.duration, d.durationS ?? 10, 1),
    rate,
    window: int("window", values.window, d.window ?? 16, 1),
    size: int("size", values.size, 64, 1),
    groupSizes,
    groupMessages: int("group-messages", values["group-messages"], d.groupMessages ?? 20, 1),
    connections: int("connections", values.connections, d.connections ?? 1000, 1),
    abusers: int("abusers", values.abusers, 4, 0),
    service,
    downS: int("down", values.down, 5, 0),
    e2ee: values.e2ee ?? false,
    json: values.json ?? false,
    baseline: values.baseline ?? d.baseline ?? false,
    concurrency: int("concurrency", values.concurrency, 8, 1),
    drainTimeoutS: int("drain-timeout", values["drain-timeout"], d.drainTimeoutS ?? 15, 1),
    settleS: int("settle", values.settle, d.settleS ?? 10, 0),
    ackDelayMs: int("ack-delay", values["ack-delay"], 5, 0),
    profileDir: values.profile,
    progress: values.progress ?? true,
  };
}
