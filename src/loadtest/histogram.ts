import * as hdr from "hdr-histogram-js";

/** Percentiles of one latency series, in milliseconds (three significant digits). */
export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;

/**
 * An HDR histogram of latencies recorded in microseconds (1 µs to 10 min, 3 significant digits),
 * read back in milliseconds. Fixed-rate runs record from each message's intended send time, which
 * corrects for coordinated omission the way wrk2 does.
 */
export class LatencyHistogram {
  private readonly histogram = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 600_000_000,
    numberOfSignificantValueDigits: 3,
    bitBucketSize: 32,
    useWebAssembly: false,
  });

  /** Records one latency given in milliseconds (sub-millisecond values keep their precision). */
  record(ms: number): void {
    this.histogram.recordValue(Math.max(1, Math.round(ms * 1000)));
  }

  get count(): number {
    return this.histogram.totalCount;
  }

  /** The latency at `percentile` (0-100) in milliseconds; 0 when nothing was recorded. */
  at(percentile: number): number {
    if (this.count === 0) return 0;
    // HDR reports a bucket's highest equivalent value; never above the largest value recorded.
    const value = Math.min(this.histogram.getValueAtPercentile(percentile), this.histogram.maxValue);
    return round(value / 1000);
  }

  summary(): LatencySummary {
    return {
      count: this.count,
      p50: this.at(50),
      p90: this.at(90),
      p99: this.at(99),
      max: this.count === 0 ? 0 : round(this.histogram.maxValue / 1000),
    };
  }

  reset(): void {
    this.histogram.reset();
  }
}
