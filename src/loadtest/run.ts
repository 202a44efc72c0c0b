import { cpus, loadavg } from "node:os";
import type { LoadtestOptions, ScenarioName } from "./options.ts";
import type { PhaseResult, ScenarioContext, System } from "./phase.ts";
import { metricsProbe, procProbe, ResourceSampler } from "./process-stats.ts";
import { Progress } from "./progress.ts";
import { abuse } from "./scenarios/abuse.ts";
import { connections } from "./scenarios/connections.ts";
import { fanout } from "./scenarios/fanout.ts";
import { offline } from "./scenarios/offline.ts";
import { oneToOne } from "./scenarios/one-to-one.ts";
import { prepareStack, type SpawnedServer, spawnNode, spawnRelay } from "./servers.ts";
import { LoadSocket } from "./socket.ts";
import { clearboxTarget, relayTarget } from "./targets.ts";

type Scenario = (ctx: ScenarioContext) => Promise<PhaseResult[]>;

/** The scenarios `runLoadtest` runs (chaos has its own runner, scenarios/chaos.ts). */
type PhasedScenario = Exclude<ScenarioName, "chaos">;

const SCENARIOS: Record<PhasedScenario, Scenario> = {
  smoke: oneToOne,
  "one-to-one": oneToOne,
  offline,
  fanout,
  connections,
  cluster: oneToOne,
  abuse,
};

/** The relay has no offline queue, so the offline backlog has no ceiling to compare with. */
const HAS_BASELINE: Record<PhasedScenario, boolean> = {
  smoke: true,
  "one-to-one": true,
  offline: false,
  fanout: true,
  connections: true,
  cluster: true,
  // The relay refuses nothing: there is no attack to compare.
  abuse: false,
};

/**
 * Settings a scenario's spawned nodes need besides the harness's own (`spawnNode`). The abuse
 * scenario keeps the production default device rate limit: the attacker's frames are what it
 * limits, and its legitimate senders stay well under it.
 */
const SCENARIO_ENV: Partial<Record<ScenarioName, Record<string, string>>> = {
  abuse: { DEVICE_RATE_LIMIT: "100" },
};

/** Everything a run measured, ready for the report. */
export interface RunResult {
  scenario: ScenarioName;
  /** What was measured: spawned nodes on the embedded or services stack, or URLs given. */
  servers: { stack: string; nodes: number; urls: string[]; spawned: boolean };
  phases: PhaseResult[];
  baseline: PhaseResult[];
  /** Log lines at warn level or above from spawned servers. */
  serverProblems: string[];
  machine: { cpus: number; loadavg: number[]; bun: string };
  startedAt: string;
  durationS: number;
}

/**
 * What a run has started and must undo, newest first: spawned processes to stop, the run's
 * database, Redis keys and RabbitMQ queues to delete. An interrupt (SIGINT, SIGTERM) runs them all
 * before the harness exits, so a run stopped with Ctrl-C leaves nothing on the shared services
 * (left there, a few hundred interrupted runs' queues once exhausted RabbitMQ's file descriptors).
 */
class Teardown {
  private readonly steps: { label: string; run: () => Promise<unknown> }[] = [];
  private interrupted: NodeJS.Signals | undefined;

  /** Registers `run` (idempotent: it may run from the signal handler and from a `finally`). */
  add(label: string, run: () => Promise<unknown>): () => Promise<void> {
    let done: Promise<void> | undefined;
    const once = () => {
      done ??= run().then(
        () => undefined,
        (error: unknown) => {
          process.stderr.write(
            `loadtest: ${label} failed: ${error instanceof Error ? error.message : error}\n`,
          );
        },
      );
      return done;
    };
    this.steps.push({ label, run: once });
    return once;
  }

  /** Installs the signal handlers until `release`; a second signal exits at once. */
  watch(progress: Progress): () => void {
    const onSignal = (signal: NodeJS.Signals) => {
      if (this.interrupted) process.exit(signal === "SIGINT" ? 130 : 143);
      this.interrupted = signal;
      process.stderr.write(`loadtest: ${signal}: stopping what the run started (again to exit at once)\n`);
      progress.stop();
      void (async () => {
        for (const step of [...this.steps].reverse()) {
          process.stderr.write(`loadtest: ${step.label}\n`);
          await step.run();
        }
        process.exit(signal === "SIGINT" ? 130 : 143);
      })();
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    return () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    };
  }
}

/**
 * Runs one scenario: the relay baseline first (when asked), then ClearBox; stops what it started,
 * also when interrupted (SIGINT/SIGTERM: exit code 130/143 once the run's nodes are stopped and its
 * database, keys and queues deleted).
 */
export async function runLoadtest(options: LoadtestOptions): Promise<RunResult> {
  if (options.scenario === "chaos") throw new Error("the chaos scenario runs through runChaos");
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const loadBefore = loadavg();
  const progress = new Progress(options.progress);
  LoadSocket.ackDelayMs = options.ackDelayMs;
  const serverProblems: string[] = [];
  const teardown = new Teardown();
  const release = teardown.watch(progress);
  try {
    const phased = { scenario: SCENARIOS[options.scenario], baseline: HAS_BASELINE[options.scenario] };
    return await runWithTeardown(
      options,
      phased,
      progress,
      teardown,
      serverProblems,
      started,
      startedAt,
      loadBefore,
    );
  } finally {
    release();
  }
}

async function runWithTeardown(
  options: LoadtestOptions,
  phased: { scenario: Scenario; baseline: boolean },
  progress: Progress,
  teardown: Teardown,
  serverProblems: string[],
  started: number,
  startedAt: string,
  loadBefore: number[],
): Promise<RunResult> {
  const { scenario } = phased;
  let baseline: PhaseResult[] = [];
  if (options.baseline && phased.baseline) {
    const relay = await spawnRelay();
    const stopRelay = teardown.add("stopping the relay", () => relay.stop());
    try {
      const system: System = {
        name: "relay",
        target: relayTarget(relay.url),
        sampler: new ResourceSampler([procProbe(relay.pid)]),
        collectGarbage: async () => [await relay.collectGarbage()],
      };
      baseline = await scenario({ options, progress, system });
    } finally {
      await stopRelay();
      serverProblems.push(...relay.problems);
    }
  }

  const spawned: SpawnedServer[] = [];
  const stops: (() => Promise<void>)[] = [];
  let cleanup = async () => {};
  let urls = options.urls;
  let phases: PhaseResult[] = [];
  try {
    let sampler: ResourceSampler;
    let queuePrefix: string | undefined;
    if (urls.length === 0) {
      const stack = await prepareStack(options.stack);
      cleanup = teardown.add("deleting the run's database, Redis keys and RabbitMQ queues", stack.cleanup);
      if (stack.queuePrefix)
        progress.note(
          `run ${stack.queuePrefix}: its database, Redis keys and RabbitMQ queues are deleted at the end`,
        );
      queuePrefix = stack.queuePrefix;
      progress.note(`starting ${options.nodes} ClearBox node(s) on the ${options.stack} stack`);
      for (let i = 0; i < options.nodes; i++) {
        const node = await spawnNode(
          { ...stack.env, ...SCENARIO_ENV[options.scenario] },
          i,
          options.profileDir,
        );
        spawned.push(node);
        stops.push(teardown.add(`stopping node ${i}`, () => node.stop()));
      }
      urls = spawned.map((s) => s.url);
      sampler = new ResourceSampler(spawned.map((s) => procProbe(s.pid)));
      // Nodes of a cluster must see each other in the ring before users arrive.
      if (options.nodes > 1) await Bun.sleep(3000);
    } else {
      const probes =
        options.adminUrl && options.adminToken ? [metricsProbe(options.adminUrl, options.adminToken)] : [];
      sampler = new ResourceSampler(probes);
    }
    const system: System = {
      name: "clearbox",
      target: clearboxTarget(urls, options.concurrency),
      sampler,
      adminUrl: spawned[0]?.adminUrl ?? options.adminUrl,
      queuePrefix,
      admins: spawned.flatMap((s) =>
        s.adminUrl && s.adminToken ? [{ adminUrl: s.adminUrl, adminToken: s.adminToken }] : [],
      ),
      ...(spawned.length > 0
        ? { collectGarbage: () => Promise.all(spawned.map((s) => s.collectGarbage())) }
        : {}),
    };
    phases = await scenario({ options, progress, system });
  } finally {
    for (const [i, s] of spawned.entries()) {
      await stops[i]();
      serverProblems.push(...s.problems);
    }
    await cleanup();
  }
  return {
    scenario: options.scenario,
    servers: {
      stack: spawned.length > 0 ? options.stack : "given",
      nodes: urls.length,
      urls,
      spawned: spawned.length > 0,
    },
    phases,
    baseline,
    serverProblems,
    machine: {
      cpus: cpus().length,
      loadavg: loadBefore.map((l) => Math.round(l * 100) / 100),
      bun: Bun.version,
    },
    startedAt,
    durationS: Math.round(performance.now() - started) / 1000,
  };
}
