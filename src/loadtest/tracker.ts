import { LatencyHistogram, type LatencySummary } from "./histogram.ts";

/** A message the harness sent and is waiting to see accepted and delivered. */
interface Outgoing {
  /** When it was (meant to be) sent: performance.now() in this process. */
  at: number;
  expected: number;
  got: number;
  accepted: boolean;
}

/** Counters and latencies of one measured phase. */
export interface PhaseCounts {
  sent: number;
  accepted: number;
  rejected: number;
  /** `busy` answers (each was sent again after its retryAfterMs; not counted in `rejected`). */
  busy: number;
  errors: number;
  delivered: number;
  expectedDeliveries: number;
  lost: number;
  duplicated: number;
  /** Deliveries of ids this phase never sent (or to a device that was not a recipient). */
  unexpected: number;
  /** Deliveries whose ciphertext did not decrypt to what was sent (`--e2ee`). */
  corrupted: number;
  rejectedCodes: Record<string, number>;
  latencyMs: { accepted: LatencySummary; delivered: LatencySummary; allDelivered: LatencySummary };
}

/**
 * Bookkeeping of one phase: every send is remembered by id with the number of deliveries it
 * should produce. Latencies are only measured for messages born in this process (Centrifugo's rule),
 * so both clocks are the same `performance.now()`.
 */
export class Tracker {
  sent = 0;
  accepted = 0;
  rejected = 0;
  busy = 0;
  errors = 0;
  delivered = 0;
  duplicated = 0;
  unexpected = 0;
  corrupted = 0;
  expectedDeliveries = 0;
  firstSendAt = Number.NaN;
  lastDeliveryAt = Number.NaN;
  lastAcceptAt = Number.NaN;
  readonly rejectedCodes: Record<string, number> = {};
  readonly acceptLatency = new LatencyHistogram();
  readonly deliverLatency = new LatencyHistogram();
  /** Send → the last of a message's deliveries (fan-out: the whole group has it). */
  readonly completeLatency = new LatencyHistogram();
  private readonly open = new Map<string, Outgoing>();
  /** Messages with deliveries still outstanding, or not yet answered. */
  private waiting = 0;

  /** A message is on its way to `expected` devices; `at` is its intended send time. */
  sentOne(id: string, expected: number, at = performance.now()): void {
    if (Number.isNaN(this.firstSendAt)) this.firstSendAt = at;
    this.sent++;
    this.expectedDeliveries += expected;
    this.waiting++;
    this.open.set(id, { at, expected, got: 0, accepted: false });
  }

  acceptedOne(id: string): void {
    const o = this.open.get(id);
    if (!o || o.accepted) return;
    o.accepted = true;
    this.accepted++;
    const now = performance.now();
    this.lastAcceptAt = now;
    this.acceptLatency.record(now - o.at);
    this.settle(id, o);
  }

  rejectedOne(id: string, code: string): void {
    const o = this.open.get(id);
    this.rejectedCodes[code] = (this.rejectedCodes[code] ?? 0) + 1;
    if (!o) return;
    this.rejected++;
    this.expectedDeliveries -= o.expected;
    this.open.delete(id);
    this.waiting--;
  }

  busyOne(): void {
    this.busy++;
  }

  errorOne(): void {
    this.errors++;
  }

  /** A device got `id` for the first time (the socket dedupes); false when this phase did not send it. */
  deliveredOne(id: string): boolean {
    const o = this.open.get(id);
    if (!o) {
      this.unexpected++;
      return false;
    }
    const now = performance.now();
    o.got++;
    this.delivered++;
    this.lastDeliveryAt = now;
    this.deliverLatency.record(now - o.at);
    if (o.got === o.expected) this.completeLatency.record(now - o.at);
    this.settle(id, o);
    return true;
  }

  duplicateOne(): void {
    this.duplicated++;
  }

  private settle(id: string, o: Outgoing) {
    if (o.accepted && o.got >= o.expected) {
      this.open.delete(id);
      this.waiting--;
    }
  }

  /** True when every sent message was answered and every accepted one fully delivered. */
  get settled(): boolean {
    return this.waiting === 0;
  }

  /** Outstanding deliveries of accepted messages: what is lost if the phase ends now. */
  get missing(): number {
    let missing = 0;
    for (const o of this.open.values()) if (o.accepted) missing += o.expected - o.got;
    return missing;
  }

  /** Sent but never answered with accepted or rejected. */
  get unanswered(): number {
    let n = 0;
    for (const o of this.open.values()) if (!o.accepted) n++;
    return n;
  }

  counts(): PhaseCounts {
    return {
      sent: this.sent,
      accepted: this.accepted,
      rejected: this.rejected,
      busy: this.busy,
      errors: this.errors,
      delivered: this.delivered,
      expectedDeliveries: this.expectedDeliveries,
      lost: this.missing,
      duplicated: this.duplicated,
      unexpected: this.unexpected,
      corrupted: this.corrupted,
      rejectedCodes: this.rejectedCodes,
      latencyMs: {
        accepted: this.acceptLatency.summary(),
        delivered: this.deliverLatency.summary(),
        allDelivered: this.completeLatency.summary(),
      },
    };
  }
}
