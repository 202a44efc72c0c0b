import { LogSummary } from "../observability/log-summary.ts";
import type { Logger } from "../observability/logger.ts";
import type { RateLimitDecision, RateLimiter, RateLimitRule } from "../ratelimit/index.ts";

/** The quota's window: a day (ms), from the account's first stored send in it. */
export const STORAGE_QUOTA_WINDOW_MS = 24 * 60 * 60 * 1000;

/** The rule's name: the limiter's key space (`rl:stored-bytes:<userId>` in Redis) and the refusal metric. */
export const STORAGE_QUOTA_RULE = "stored-bytes";

/**
 * Bytes a base64 ciphertext (as frames carry it) takes once decoded, as the envelope log stores it
 * (bytea): three per four characters, less the padding.
 */
export function decodedLength(base64: string): number {
  const padding = base64.endsWith("==") ? 2 : base64.endsWith("=") ? 1 : 0;
  return Math.floor((base64.length * 3) / 4) - padding;
}

/**
 * A per-account budget of the ciphertext bytes sends make the server store (docs/PROTOCOL.md,
 * "Sends"; docs/SCALING.md): each recipient device's body of a 1:1 send, a group send's one body.
 * Counted by the node's rate limiter (memory on the embedded node, Redis shared by every node on
 * services), in fixed windows of `windowMs` per account. A send past the budget is refused before
 * anything is stored and its bytes are given back, so a smaller send may still fit. Should the
 * limiter fail (Redis unreachable), sends are let through (one warning per burst): the quota bounds
 * abuse, it must not take messaging down with Redis.
 */
export class StorageQuota {
  private readonly rule: RateLimitRule;
  private readonly failures: LogSummary;

  constructor(
    private readonly limiter: RateLimiter,
    /** Bytes one account's sends may store per window (positive). */
    bytesPerWindow: number,
    logger: Pick<Logger, "warn" | "error">,
    /** The window (ms); a day but in tests. */
    windowMs: number = STORAGE_QUOTA_WINDOW_MS,
  ) {
    this.rule = { name: STORAGE_QUOTA_RULE, limit: bytesPerWindow, windowMs };
    this.failures = new LogSummary(logger, "warn", "storage quota unavailable; sends let through");
  }

  /**
   * Charges `bytes` (decoded ciphertext bytes, > 0) to `userId`'s window. Allowed, or refused with
   * the ms until the window ends (the refused bytes are not kept). One limiter round trip when
   * allowed, two when refused. Never rejects: a limiter failure allows.
   */
  async charge(userId: string, bytes: number): Promise<RateLimitDecision> {
    try {
      const decision = await this.limiter.hit(this.rule, userId, bytes);
      if (!decision.allowed) await this.limiter.release(this.rule, userId, bytes);
      return decision;
    } catch (error) {
      this.failures.note({ err: error });
      return { allowed: true };
    }
  }

  /** Gives back bytes charged for a send that then stored nothing (a group send refused by its actor). */
  async refund(userId: string, bytes: number): Promise<void> {
    await this.limiter
      .release(this.rule, userId, bytes)
      .catch((error: unknown) => this.failures.note({ err: error }));
  }
}
