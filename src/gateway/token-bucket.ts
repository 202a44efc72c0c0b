/** The default clock, shared: a default-parameter arrow would be one closure per bucket (per socket). */
const monotonicMs = () => performance.now();

/** A token bucket: `rate` tokens a second, at most `burst` saved up. */
export class TokenBucket {
  private tokens: number;
  private updated: number;

  constructor(
    private readonly rate: number,
    /** The most tokens the bucket holds (a take of more never succeeds). */
    readonly burst: number,
    private readonly now: () => number = monotonicMs,
  ) {
    this.tokens = burst;
    this.updated = now();
  }

  /** Takes `cost` tokens (default one) if there are that many. */
  take(cost = 1): boolean {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updated) / 1000) * this.rate);
    this.updated = now;
    if (this.tokens < cost) return false;
    this.tokens -= cost;
    return true;
  }
}
