import { LogSummary } from "../observability/log-summary.ts";
import type { Logger } from "../observability/logger.ts";
import type { RateLimitDecision, RateLimiter, RateLimitRule } from "../ratelimit/index.ts";

/** The quota's window: a day (ms), from the account's first stored send in it. */
export const STORAGE_QUOTA_WINDOW_MS = 24 * 60 * 60 * 1000;

/** The rule's name: the limiter's key space (`rl:stored-bytes:<userId>` in Redis) and the refusal metric. */
export const STORAGE_QUOTA_RULE = "stored-bytes";

/** A lease is this fraction of the budget: 256 KiB of the default 256 MiB. */
const LEASE_FRACTION = 1024;

/** Below this a lease would save few round trips: budgets under 4 MiB are counted send by send. */
const MIN_LEASE_BYTES = 4096;

/** A lease unused this long (ms) goes back to the shared counter, and its entry is dropped. */
export const LEASE_IDLE_MS = 60_000;

/**
 * Bytes a base64 ciphertext (as frames carry it) takes once decoded, as the envelope log stores it
 * (bytea): three per four characters, less the padding.
 */
export function decodedLength(base64: string): number {
  const padding = base64.endsWith("==") ? 2 : base64.endsWith("=") ? 1 : 0;
  return Math.floor((base64.length * 3) / 4) - padding;
}

/**
 * A `charge`'s answer: allowed with the bytes it counted against the budget (`charged`: what a
 * refund may give back; 0 when the limiter failed and the send was let through uncounted), or
 * refused with the ms until the window ends.
 */
export type QuotaDecision =
  | { allowed: true; charged: number }
  | Extract<RateLimitDecision, { allowed: false }>;

/** Options of a StorageQuota; the defaults are the node's, tests shorten them. */
export interface StorageQuotaOptions {
  /** The window (ms); a day but in tests. */
  windowMs?: number;
  /** Idle time (ms) after which a lease goes back (LEASE_IDLE_MS). */
  leaseIdleMs?: number;
  /** The clock (Unix ms). */
  now?: () => number;
}

/**
 * A per-account budget of the ciphertext bytes sends make the server store (docs/PROTOCOL.md,
 * "Sends"; docs/SCALING.md): each recipient device's body of a 1:1 send or a group send (charged by the group's actor).
 * Counted by the node's rate limiter (memory on the embedded node, Redis shared by every node on
 * services), in fixed windows of `windowMs` per account.
 *
 * Leases, so that a send costs no round trip to Redis: a node takes an account's bytes from the
 * shared counter a lease at a time (1/1024 of the budget, at least 4 KiB; none below a 4 MiB budget)
 * and spends it locally; an unused lease goes back after `leaseIdleMs`, on `close`, or when the
 * shared counter refuses a new one. Near the budget a node gives back what it holds and counts the
 * send exactly, so on one node the quota is exact; with k nodes the others may hold up to a lease
 * each, so an account may be refused up to (k − 1) leases early, or, a lease taken at the end of a
 * window being spent in the next, store up to k leases more in a window (0.1 % of the budget per
 * node). The same scheme as a token-leasing quota service (Google's Doorman, Envoy's quota leases).
 *
 * A send past the budget is refused before anything is stored and its bytes are given back, so a
 * smaller send may still fit. Should the limiter fail (Redis unreachable), sends are let through
 * (one warning per burst): the quota bounds abuse, it must not take messaging down with Redis.
 */
export class StorageQuota {
  private readonly rule: RateLimitRule;
  private readonly failures: LogSummary;
  private readonly leaseBytes: number;
  private readonly leaseIdleMs: number;
  private readonly now: () => number;
  /** Bytes this node took from the shared counter and has not spent, per account, and when last used. */
  private readonly leases = new Map<string, { bytes: number; usedAt: number }>();
  private readonly sweeper: ReturnType<typeof setInterval> | undefined;
  /** Accounts whose lease this node is taking now (a round trip in flight), settled when it ends. */
  private readonly taking = new Map<string, Promise<void>>();

  constructor(
    private readonly limiter: RateLimiter,
    /** Bytes one account's sends may store per window (positive). */
    bytesPerWindow: number,
    logger: Pick<Logger, "warn" | "error">,
    options: StorageQuotaOptions = {},
  ) {
    this.rule = {
      name: STORAGE_QUOTA_RULE,
      limit: bytesPerWindow,
      windowMs: options.windowMs ?? STORAGE_QUOTA_WINDOW_MS,
    };
    this.failures = new LogSummary(logger, "warn", "storage quota unavailable; sends let through");
    const lease = Math.floor(bytesPerWindow / LEASE_FRACTION);
    this.leaseBytes = lease >= MIN_LEASE_BYTES ? lease : 0;
    this.leaseIdleMs = options.leaseIdleMs ?? LEASE_IDLE_MS;
    this.now = options.now ?? Date.now;
    if (this.leaseBytes > 0) {
      this.sweeper = setInterval(() => void this.giveBackIdle(), this.leaseIdleMs);
      this.sweeper.unref?.();
    }
  }

  /**
   * Charges `bytes` (decoded ciphertext bytes, > 0) to `userId`'s window. Allowed with the bytes
   * counted (`charged`: `bytes`, or 0 when the limiter failed and the send was let through
   * uncounted), or refused with the ms until the window ends (the refused bytes are not kept). A
   * caller refunds at most `charged`, never the bytes it asked for: a refund of bytes the limiter
   * never counted would add budget. No round trip while this node's lease covers it; otherwise one
   * to take a new lease, and near the budget up to three more (refuse the lease, give back what is
   * held, count exactly); concurrent charges of one account that outrun the lease wait for the one
   * lease being taken before taking another. Never rejects: a limiter failure allows. Answers
   * synchronously (no promise) when this node's lease covers the send, so the usual send costs its
   * caller no await.
   */
  charge(userId: string, bytes: number): QuotaDecision | Promise<QuotaDecision> {
    if (this.spend(userId, bytes)) return { allowed: true, charged: bytes };
    return this.chargeShared(userId, bytes);
  }

  /** `charge` past this node's lease: from the shared counter. */
  private async chargeShared(userId: string, bytes: number): Promise<QuotaDecision> {
    // A lease being taken for this account: wait for it once and spend from it if it covers this
    // send. Without this, concurrent sends that outran the lease each took a lease of their own
    // (128 devices: 128 leases held), refusing the account on other nodes that much early.
    const taking = this.taking.get(userId);
    if (taking) {
      await taking;
      if (this.spend(userId, bytes)) return { allowed: true, charged: bytes };
    }
    let taken = () => {};
    if (this.leaseBytes > 0 && !this.taking.has(userId)) {
      const take = new Promise<void>((resolve) => {
        taken = () => {
          if (this.taking.get(userId) === take) this.taking.delete(userId);
          resolve();
        };
      });
      this.taking.set(userId, take);
    }
    try {
      if (this.leaseBytes > 0) {
        const want = bytes + this.leaseBytes;
        if ((await this.limiter.hit(this.rule, userId, want)).allowed) {
          this.hold(userId, this.leaseBytes);
          return { allowed: true, charged: bytes };
        }
        await this.limiter.release(this.rule, userId, want);
        // Near the budget: what this node holds goes back, and this send is counted exactly.
        const left = this.leases.get(userId);
        this.leases.delete(userId);
        if (left && left.bytes > 0) await this.limiter.release(this.rule, userId, left.bytes);
      }
      const decision = await this.limiter.hit(this.rule, userId, bytes);
      if (decision.allowed) return { allowed: true, charged: bytes };
      await this.limiter.release(this.rule, userId, bytes);
      return decision;
    } catch (error) {
      // Let through uncounted: nothing to refund should the send store nothing.
      this.failures.note({ err: error });
      return { allowed: true, charged: 0 };
    } finally {
      taken();
    }
  }

  /** Spends `bytes` from this node's lease of `userId` if it holds that many; false otherwise. */
  private spend(userId: string, bytes: number): boolean {
    const held = this.leases.get(userId);
    if (!held || held.bytes < bytes) return false;
    held.bytes -= bytes;
    held.usedAt = this.now();
    return true;
  }

  /**
   * Gives back bytes a `charge` counted (its `charged`, at most) for a send that then stored nothing
   * (a group send refused by its actor, a re-sent id, a failed append). Nothing for 0 or less.
   */
  async refund(userId: string, bytes: number): Promise<void> {
    if (!(bytes > 0)) return;
    // Charged already: with leases they join this node's lease, which goes back when idle.
    if (this.leaseBytes > 0) {
      this.hold(userId, bytes);
      return;
    }
    await this.giveBack(userId, bytes);
  }

  /** Forgets `userId`'s lease without giving it back (erasure: the shared counter is dropped too). */
  forget(userId: string): void {
    this.leases.delete(userId);
  }

  /** Gives every lease back (node stop); resolves when the limiter has them or failed. */
  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    const leases = [...this.leases];
    this.leases.clear();
    await Promise.all(leases.map(([userId, lease]) => this.giveBack(userId, lease.bytes)));
  }

  /** Drops every lease without giving it back (a node aborted as if killed: the leases are lost, as they would be). */
  abort(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.leases.clear();
  }

  /** How many accounts this node holds a lease for (tests, bounded-memory checks). */
  get leasedAccounts(): number {
    return this.leases.size;
  }

  /**
   * Gives back the leases unused for `leaseIdleMs` (the map holds only accounts that sent lately);
   * resolves when the limiter has them or failed.
   */
  async giveBackIdle(): Promise<void> {
    const before = this.now() - this.leaseIdleMs;
    const idle: Promise<void>[] = [];
    for (const [userId, lease] of this.leases) {
      if (lease.usedAt > before) continue;
      this.leases.delete(userId);
      idle.push(this.giveBack(userId, lease.bytes));
    }
    await Promise.all(idle);
  }

  private hold(userId: string, bytes: number): void {
    const lease = this.leases.get(userId);
    if (lease) {
      lease.bytes += bytes;
      lease.usedAt = this.now();
    } else this.leases.set(userId, { bytes, usedAt: this.now() });
  }

  private async giveBack(userId: string, bytes: number): Promise<void> {
    if (bytes <= 0) return;
    await this.limiter
      .release(this.rule, userId, bytes)
      .catch((error: unknown) => this.failures.note({ err: error }));
  }
}
