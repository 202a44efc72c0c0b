import type { AuditTrail } from "../audit/types.ts";
import type { Logger } from "../observability/logger.ts";
import type { RateLimiter, RateLimitRule } from "../ratelimit/index.ts";

/** Why an admin call was refused before any route ran. */
export type RefusalReason = "admin_disabled" | "missing_token" | "wrong_token";

/** Refused calls one address may make per minute before it is answered 429 instead of 401. */
export const REFUSALS_PER_ADDRESS = 10;

/** One audit entry per this long, however many calls were refused in it. */
export const REFUSAL_WINDOW_MS = 60_000;

/** What one window of refusals adds up to. */
interface Window {
  from: number;
  count: number;
  reasons: Partial<Record<RefusalReason, number>>;
  statuses: Record<string, number>;
  addresses: Set<string>;
}

/**
 * Refused admin calls (missing or wrong token, or no `ADMIN_TOKEN`), kept from flooding the audit
 * chain and the log: each address gets `REFUSALS_PER_ADDRESS` a minute (then 429 with
 * `Retry-After`), and a window's refusals become **one** `admin.refused` entry with their count,
 * reasons and statuses, written when the window closes (a minute after its first refusal) or when
 * the node stops. Addresses are counted, never written. A crash loses the open window's entry.
 */
export class AdminRefusals {
  private window: Window | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private writing: Promise<void> = Promise.resolve();
  private readonly rule: RateLimitRule;

  constructor(
    private readonly deps: {
      audit?: AuditTrail;
      limiter: RateLimiter;
      logger: Logger;
      windowMs?: number;
      perAddress?: number;
    },
  ) {
    this.rule = { name: "admin-refusals", limit: deps.perAddress ?? REFUSALS_PER_ADDRESS, windowMs: 60_000 };
  }

  /**
   * Counts one refused call from `address`. Returns the seconds to wait when the address is over its
   * budget (answer 429), else undefined (answer 401).
   */
  async refused(address: string, reason: RefusalReason): Promise<number | undefined> {
    const decision = await this.deps.limiter.hit(this.rule, address);
    const retryAfterSeconds = decision.allowed
      ? undefined
      : Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
    const window = this.open();
    window.count++;
    window.reasons[reason] = (window.reasons[reason] ?? 0) + 1;
    const status = retryAfterSeconds === undefined ? "401" : "429";
    window.statuses[status] = (window.statuses[status] ?? 0) + 1;
    window.addresses.add(address);
    return retryAfterSeconds;
  }

  private open(): Window {
    if (this.window) return this.window;
    this.window = { from: Date.now(), count: 0, reasons: {}, statuses: {}, addresses: new Set() };
    this.timer = setTimeout(() => void this.flush(), this.deps.windowMs ?? REFUSAL_WINDOW_MS);
    this.timer.unref?.();
    return this.window;
  }

  /** Closes the open window now: one audit entry and one log line for all its refusals. */
  flush(): Promise<void> {
    const window = this.window;
    this.window = undefined;
    clearTimeout(this.timer);
    if (!window || window.count === 0) return this.writing;
    const details = {
      count: window.count,
      reasons: window.reasons,
      statuses: window.statuses,
      addresses: window.addresses.size,
      from: new Date(window.from).toISOString(),
      to: new Date().toISOString(),
    };
    this.deps.logger.warn(details, "admin calls refused: missing or wrong token");
    // Entries are written one after another, so two windows never race for the chain.
    this.writing = this.writing.then(async () => {
      try {
        await this.deps.audit?.record({ action: "admin.refused", actor: "system", details });
      } catch (err) {
        this.deps.logger.error({ err, action: "admin.refused" }, "audit write failed");
      }
    });
    return this.writing;
  }

  /** Writes what is pending (node shutdown). */
  stop(): Promise<void> {
    return this.flush();
  }
}
