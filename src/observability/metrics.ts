import {
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type Metric,
  type MetricObjectWithValues,
  type MetricValueWithName,
  Registry,
} from "prom-client";
import type { ActorCensus, ActorSystemStats } from "../../actors/index.ts";

/**
 * Codes a send is refused with: the `rejected` codes of docs/PROTOCOL.md, and `internal` for a send
 * that failed (an `error` frame: not accepted, may be sent again). Initialised to zero so every
 * series exists from the first scrape.
 */
export const SEND_OUTCOME_CODES = [
  "mismatched_devices",
  "not_member",
  "unknown_recipient",
  "rate_limited",
  "too_large",
  "invalid",
  "busy",
  "internal",
] as const;

/** Rate limits a node refuses by itself, besides the named rules of the rate limiter (src/ratelimit). */
export const NODE_LIMITS = ["device_frames", "presence_watches", "presence_watches_account"] as const;

/** Upper bounds (seconds) of the delivery latency histogram: from 1 ms (live push) to a day (offline). */
export const DELIVERY_LATENCY_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86_400,
];

/** How a delivered envelope reached its device: pushed live, or read from its offline queue on reconnect. */
export type DeliveryPath = "live" | "offline";

/**
 * Counts of the messaging hot path, kept as plain numbers so a send or a delivery costs an integer
 * increment and nothing is allocated per message; `Metrics` folds them into Prometheus series when
 * scraped. One instance per node.
 */
export class MessageTallies {
  accepted = 0;
  /** Per refusal code; only codes of SEND_OUTCOME_CODES are counted (anything else as `internal`). */
  readonly rejected = new Map<string, number>(SEND_OUTCOME_CODES.map((code) => [code, 0]));
  /** Envelopes written to a device's socket, by path. */
  deliveredLive = 0;
  deliveredOffline = 0;
  /** Envelopes copied to a device's offline queue (confirmed by the queue). */
  queuedOffline = 0;
  /** Refusals by limit name (NODE_LIMITS and the rate limiter's rule names; never a key). */
  readonly refusals = new Map<string, number>(NODE_LIMITS.map((limit) => [limit, 0]));
  /** Acceptance → push, per path: counts per bucket of DELIVERY_LATENCY_BUCKETS (+Inf last), sum in seconds. */
  readonly latency = {
    live: new BucketCounts(DELIVERY_LATENCY_BUCKETS),
    offline: new BucketCounts(DELIVERY_LATENCY_BUCKETS),
  };

  /** A send was refused with `code`. */
  reject(code: string): void {
    const current = this.rejected.get(code);
    if (current === undefined) this.rejected.set("internal", (this.rejected.get("internal") ?? 0) + 1);
    else this.rejected.set(code, current + 1);
  }

  /** A request or frame was refused by the limit named `limit` (a fixed name, never a key). */
  refuse(limit: string): void {
    this.refusals.set(limit, (this.refusals.get(limit) ?? 0) + 1);
  }

  /** One envelope accepted at `acceptedAt` (Unix ms) was written to its device's socket at `now`. */
  delivered(path: DeliveryPath, acceptedAt: number, now: number): void {
    if (path === "live") this.deliveredLive++;
    else this.deliveredOffline++;
    this.latency[path].observe(Math.max(0, now - acceptedAt) / 1000);
  }
}

/** A fixed-bucket histogram in a Float64Array: observing allocates nothing. */
export class BucketCounts {
  /** Non-cumulative counts per bucket; the last one is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    let i = 0;
    while (i < this.bounds.length && value > this.bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
  }
}

/**
 * A Prometheus histogram read from `BucketCounts` at scrape time (prom-client's own Histogram
 * allocates on every observation). Registered with `Registry.registerMetric`; the registry adds the
 * default labels (`node`). Exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/
 */
class BucketHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly labelNames: string[];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly label: string,
    private readonly series: Record<string, BucketCounts>,
  ) {
    this.labelNames = [label];
  }

  /** The series in prom-client's MetricObject shape, which `Registry.metrics()` formats. */
  async get(): Promise<
    Omit<MetricObjectWithValues<MetricValueWithName<string>>, "collect" | "type"> & { type: string }
  > {
    const values: MetricValueWithName<string>[] = [];
    for (const [value, counts] of Object.entries(this.series)) {
      let cumulative = 0;
      counts.bounds.forEach((bound, i) => {
        cumulative += counts.counts[i];
        values.push({
          metricName: `${this.name}_bucket`,
          labels: { le: bound, [this.label]: value },
          value: cumulative,
        });
      });
      cumulative += counts.counts[counts.bounds.length];
      values.push({
        metricName: `${this.name}_bucket`,
        labels: { le: "+Inf", [this.label]: value },
        value: cumulative,
      });
      values.push({ metricName: `${this.name}_sum`, labels: { [this.label]: value }, value: counts.sum });
      values.push({ metricName: `${this.name}_count`, labels: { [this.label]: value }, value: counts.count });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  reset(): void {}
}

/** What the node's metrics read when scraped; every source is optional until the node wires it. */
export interface MetricSources {
  /** The actor system's counters and its census (src: `ActorSystem.stats()` / `census()`). */
  actors?: {
    stats(): Pick<ActorSystemStats, "handedOff" | "ringMembers" | "transport">;
    census(): ActorCensus;
  };
  /** Open WebSocket connections on this node. */
  connections?: () => number;
  /** Erasure jobs by state, and the age (seconds) of the oldest unfinished one (0 when none). */
  erasures?: () => Promise<{ pending: number; done: number; oldestPendingSeconds: number }>;
  /** Device removals not finished yet, shared by every node (src: `DeviceService.removalStats()`). */
  deviceRemovals?: () => Promise<{ unfinished: number; maxAttempts: number }>;
}

type ActorStats = ReturnType<NonNullable<MetricSources["actors"]>["stats"]>;

/**
 * Prometheus metrics of one node, in a registry of its own so several nodes can share a process.
 * Names follow https://prometheus.io/docs/practices/naming/ (`clearbox_` prefix, base units,
 * `_total` for counters). No label names a person: labels are codes, kinds, paths, operations,
 * limit names and the node id.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<"method" | "route" | "status">;
  readonly httpDuration: Histogram<"method" | "route">;
  /** The messaging hot path's counts (plain numbers), read at scrape. */
  readonly tallies = new MessageTallies();
  readonly groupCommitBatch: Histogram<"operation">;
  readonly groupCommitWrite: Histogram<"operation">;
  readonly retentionRemovals: Counter<"store">;
  readonly erasuresCompleted: Counter;
  private sources: MetricSources = {};

  constructor(nodeId: string, options: { processMetrics?: boolean } = {}) {
    this.registry.setDefaultLabels({ node: nodeId });
    const registers = [this.registry];
    this.httpRequests = new Counter({
      name: "clearbox_http_requests_total",
      help: "HTTP requests answered by the public listener",
      labelNames: ["method", "route", "status"],
      registers,
    });
    this.httpDuration = new Histogram({
      name: "clearbox_http_request_duration_seconds",
      help: "Time to answer an HTTP request on the public listener",
      labelNames: ["method", "route"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    const tallies = this.tallies;

    // Messages: accepted, refused, delivered, through the offline queues.
    this.counterOf(
      "clearbox_messages_accepted_total",
      "Sends accepted (durable in the log)",
      () => tallies.accepted,
    );
    this.labelledCounter(
      "clearbox_messages_rejected_total",
      "Sends refused, by protocol code (`internal`: failed, the client may send again)",
      "code",
      () => tallies.rejected,
    );
    this.labelledCounter(
      "clearbox_messages_delivered_total",
      "Envelopes written to a device's socket: pushed live, or read from its offline queue",
      "path",
      () =>
        new Map([
          ["live", tallies.deliveredLive],
          ["offline", tallies.deliveredOffline],
        ]),
    );
    this.counterOf(
      "clearbox_offline_envelopes_queued_total",
      "Envelopes copied to a device's offline queue (the device was not connected)",
      () => tallies.queuedOffline,
    );
    this.counterOf(
      "clearbox_offline_envelopes_drained_total",
      "Envelopes read from offline queues and written to their reconnected device",
      () => tallies.deliveredOffline,
    );
    this.registry.registerMetric(
      new BucketHistogram(
        "clearbox_delivery_latency_seconds",
        "Time from a send's acceptance to its envelope being written to the recipient device's socket",
        "path",
        tallies.latency,
      ) as unknown as Metric,
    );
    this.labelledCounter(
      "clearbox_rate_limit_refusals_total",
      "Requests and frames refused by a rate limit, by the limit's name",
      "limit",
      () => tallies.refusals,
    );

    // Group commit.
    this.groupCommitBatch = new Histogram({
      name: "clearbox_group_commit_batch_size",
      help: "Items carried by one group-committed write of the envelope log",
      labelNames: ["operation"],
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000],
      registers,
    });
    this.groupCommitWrite = new Histogram({
      name: "clearbox_group_commit_write_seconds",
      help: "Duration of one group-committed write of the envelope log",
      labelNames: ["operation"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });

    // Actors, connections, the cluster.
    const actorsActive = new Gauge({
      name: "clearbox_actors_active",
      help: "Actor activations on this node, by kind",
      labelNames: ["kind"],
      registers,
      collect: () => {
        const census = this.sources.actors?.census();
        if (!census) return;
        actorsActive.reset();
        for (const [kind, count] of census.byKind) actorsActive.set({ kind }, count);
        mailboxDepth.set(census.queued);
        mailboxDepthMax.set(census.maxQueued);
      },
    });
    const mailboxDepth = new Gauge({
      name: "clearbox_actor_mailbox_messages",
      help: "Messages waiting in the mailboxes of this node's actors",
      registers,
    });
    const mailboxDepthMax = new Gauge({
      name: "clearbox_actor_mailbox_messages_max",
      help: "Messages waiting in the fullest mailbox of this node",
      registers,
    });
    const connections: Gauge = new Gauge({
      name: "clearbox_connections",
      help: "Open WebSocket connections on this node",
      registers,
      collect: () => {
        connections.set(this.sources.connections?.() ?? 0);
      },
    });
    const ringMembers = new Gauge({
      name: "clearbox_cluster_ring_members",
      help: "Members of the ring in this node's view",
      registers,
      collect: () => {
        const stats = this.sources.actors?.stats();
        if (stats) ringMembers.set(stats.ringMembers);
      },
    });
    const actorStat = (pick: (stats: ActorStats) => number) => () => {
      const stats = this.sources.actors?.stats();
      return stats ? pick(stats) : undefined;
    };
    this.counterOf(
      "clearbox_actor_handoffs_total",
      "Actors this node handed to a new owner after a ring change",
      actorStat((s) => s.handedOff),
    );
    this.counterOf(
      "clearbox_transport_transfers_sent_total",
      "Transfers (batches of frames) this node sent to other nodes' inboxes",
      actorStat((s) => s.transport.transfersSent),
    );
    this.counterOf(
      "clearbox_transport_frames_sent_total",
      "Frames (messages, replies, handoff notices) this node sent to other nodes",
      actorStat((s) => s.transport.framesSent),
    );
    this.counterOf(
      "clearbox_transport_transfers_confirmed_total",
      "Transfers the broker confirmed (publisher confirms)",
      actorStat((s) => s.transport.transfersConfirmed),
    );
    this.counterOf(
      "clearbox_transport_transfers_failed_total",
      "Transfers that failed (unroutable, broker refused or connection lost)",
      actorStat((s) => s.transport.transfersFailed),
    );
    this.counterOf(
      "clearbox_transport_transfers_received_total",
      "Transfers taken from this node's inbox (or an adopted dead node's)",
      actorStat((s) => s.transport.transfersReceived),
    );
    this.counterOf(
      "clearbox_transport_frames_received_total",
      "Frames in the transfers this node received",
      actorStat((s) => s.transport.framesReceived),
    );

    // GDPR and storage limitation. The registry collects every metric at once (prom-client's
    // Promise.all), so a gauge set from another gauge's collect is read before that collect's query
    // returns and lags one scrape: each pair of gauges shares one read per scrape instead.
    const readErasures = sharedRead(() => this.sources.erasures);
    const erasureJobs = new Gauge({
      name: "clearbox_erasure_jobs",
      help: "Erasure jobs in the database, by state (shared by every node)",
      labelNames: ["state"],
      registers,
      collect: async () => {
        const jobs = await readErasures();
        if (!jobs) return;
        erasureJobs.set({ state: "pending" }, jobs.pending);
        erasureJobs.set({ state: "done" }, jobs.done);
      },
    });
    for (const state of ["pending", "done"]) erasureJobs.set({ state }, 0);
    const oldestPending = new Gauge({
      name: "clearbox_erasure_oldest_pending_seconds",
      help: "Age of the oldest unfinished erasure job (0 when none)",
      registers,
      collect: async () => {
        const jobs = await readErasures();
        if (jobs) oldestPending.set(jobs.oldestPendingSeconds);
      },
    });
    // A removal keeps its device id from new devices until its follow-ups succeed: one whose
    // attempts keep rising (a retention pass each) holds the id for good and needs an operator.
    const readRemovals = sharedRead(() => this.sources.deviceRemovals);
    const removalsUnfinished = new Gauge({
      name: "clearbox_device_removals_unfinished",
      help: "Device removals whose follow-ups have not all finished; each keeps its device id blocked (shared by every node)",
      registers,
      collect: async () => {
        const stats = await readRemovals();
        if (stats) removalsUnfinished.set(stats.unfinished);
      },
    });
    const removalAttemptsMax = new Gauge({
      name: "clearbox_device_removal_attempts_max",
      help: "Most follow-up attempts of any unfinished device removal (0 when none; shared by every node)",
      registers,
      collect: async () => {
        const stats = await readRemovals();
        if (stats) removalAttemptsMax.set(stats.maxAttempts);
      },
    });
    this.erasuresCompleted = new Counter({
      name: "clearbox_erasures_completed_total",
      help: "Erasure jobs this node completed",
      registers,
    });
    this.retentionRemovals = new Counter({
      name: "clearbox_retention_removals_total",
      help: "Records the retention job removed, by store",
      labelNames: ["store"],
      registers,
    });
    for (const store of RETENTION_STORES) this.retentionRemovals.inc({ store }, 0);

    if (options.processMetrics) collectDefaultMetrics({ register: this.registry, prefix: "clearbox_" });
  }

  /** Wires what the scrape reads (the composition root calls this once its parts exist). */
  observe(sources: MetricSources): void {
    this.sources = { ...this.sources, ...sources };
  }

  /** Creates the group-commit series of these operations at zero, so they exist before the first write. */
  commitOperations(operations: readonly string[]): void {
    for (const operation of operations) {
      this.groupCommitBatch.zero({ operation });
      this.groupCommitWrite.zero({ operation });
    }
  }

  /** A group-committed write of the envelope log (`CommitListener` of src/messaging). */
  readonly commit = (operation: string, items: number, seconds: number): void => {
    this.groupCommitBatch.observe({ operation }, items);
    this.groupCommitWrite.observe({ operation }, seconds);
  };

  /** A counter whose value is read from a monotonic number at scrape. */
  private counterOf(name: string, help: string, read: () => number | undefined): void {
    let last = 0;
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const now = read();
        if (now === undefined || now < last) return;
        this.inc(now - last);
        last = now;
      },
    });
  }

  /** A labelled counter whose values are read from monotonic numbers per label value at scrape. */
  private labelledCounter(name: string, help: string, label: string, read: () => Map<string, number>): void {
    const last = new Map<string, number>();
    const counter = new Counter({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect() {
        for (const [value, now] of read()) {
          const before = last.get(value) ?? 0;
          if (now < before) continue;
          this.inc({ [label]: value }, now - before);
          last.set(value, now);
        }
      },
    });
    for (const value of read().keys()) counter.inc({ [label]: value }, 0);
  }
}

/**
 * One call of the source `source()` returns (when wired) shared by every caller while it runs: the
 * gauges that read it in one scrape (collected concurrently) all see the same result. Resolves to
 * undefined when no source is wired or the read fails (the database is down: the gauges keep their
 * last values; readiness and the error rate say why).
 */
function sharedRead<T>(source: () => (() => Promise<T>) | undefined): () => Promise<T | undefined> {
  let running: Promise<T | undefined> | undefined;
  return () => {
    const read = source();
    if (!read) return Promise.resolve(undefined);
    running ??= read()
      .catch(() => undefined)
      .finally(() => {
        running = undefined;
      });
    return running;
  };
}

/** Stores the retention job prunes (the `store` label of clearbox_retention_removals_total). */
export const RETENTION_STORES = [
  "envelopes",
  "refresh_tokens",
  "oidc_sign_in_codes",
  "oidc_logout_tokens",
  "handed_out_pre_keys",
  "audit_entries",
] as const;
