import type { DomainError } from "../errors/index.ts";
import {
  type RateLimitDecision,
  type RateLimiter,
  type RateLimitRule,
  rateLimitedError,
} from "../ratelimit/index.ts";

/** Every login budget counts over this window (fixed, from the first attempt it counts). */
export const LOGIN_WINDOW_MS = 15 * 60_000;

/**
 * Budgets of password checks per 15-minute window, after Synapse's `rc_login` split
 * (`address` / `account` / `failed_attempts`), with the failures keyed by address as well, so that
 * one address cannot lock an account out for its owner elsewhere.
 */
export interface LoginLimits {
  /** Checks from one client address, whichever account they are for (`rc_login.address`). */
  attemptsPerAddress: number;
  /** Successful checks of one account (`rc_login.account`): only the password's owner can spend it. */
  successesPerAccount: number;
  /** Wrong passwords for one account from one address (`rc_login.failed_attempts`, per address). */
  failuresPerAddress: number;
  /**
   * Wrong passwords for one account from every address: distributed guessing. More than twice
   * `failuresPerAddress` (checked at start-up), so no single address can reach it.
   */
  failuresPerAccount: number;
}

/** Defaults of `LOGIN_ATTEMPTS_PER_ADDRESS`, `LOGINS_PER_ACCOUNT`, `LOGIN_FAILURES_PER_ADDRESS`, `LOGIN_FAILURES_PER_ACCOUNT`. */
export const DEFAULT_LOGIN_LIMITS: LoginLimits = {
  attemptsPerAddress: 100,
  successesPerAccount: 30,
  failuresPerAddress: 10,
  failuresPerAccount: 100,
};

function refusal(decision: RateLimitDecision, message: string): DomainError | undefined {
  return decision.allowed ? undefined : rateLimitedError(decision.retryAfterMs, message);
}

/**
 * The one throttle every password check goes through (login, `DELETE /v1/me`, password change):
 * `AccountService` calls `admit` before it looks at the password and `succeeded` after a match.
 * Each attempt is counted atomically (one INCR per budget, Redis or memory) *before* the check, as
 * a presumed failure, so parallel requests cannot all pass a check made before any was counted;
 * a right password gives its failure back. Budgets are checked address first: an address that is
 * refused spends nothing of the account's budgets. Accounts are keyed by the name the client gave
 * (unknown names are counted like known ones, so a refusal says nothing about existence).
 */
export class PasswordThrottle {
  private readonly rules: Record<"address" | "successes" | "failuresHere" | "failures", RateLimitRule>;

  constructor(
    private readonly limiter: RateLimiter,
    limits: LoginLimits = DEFAULT_LOGIN_LIMITS,
  ) {
    const windowMs = LOGIN_WINDOW_MS;
    this.rules = {
      address: { name: "login-address", limit: limits.attemptsPerAddress, windowMs },
      successes: { name: "login-account", limit: limits.successesPerAccount, windowMs },
      failuresHere: { name: "login-failures-address", limit: limits.failuresPerAddress, windowMs },
      failures: { name: "login-failures", limit: limits.failuresPerAccount, windowMs },
    };
  }

  private pair(account: string, address: string): string {
    return `${account}@${address}`;
  }

  /**
   * Counts one password check of `account` from `address` before it runs; `rate_limited` (with
   * `retryAfterSeconds`) when a budget is spent, and then the password must not be checked.
   */
  async admit(account: string, address: string): Promise<void> {
    const { address: perAddress, failuresHere, failures } = this.rules;
    const checks: [RateLimitRule, string, string][] = [
      [perAddress, address, "too many login attempts from this address, retry later"],
      [failuresHere, this.pair(account, address), "too many failed logins for this account, retry later"],
      [failures, account, "too many failed logins for this account, retry later"],
    ];
    for (const [rule, key, message] of checks) {
      const refused = refusal(await this.limiter.hit(rule, key), message);
      if (refused) throw refused;
    }
  }

  /**
   * The password was right: this address's failures for the account are forgiven (as Synapse resets
   * `failed_attempts`), the account-wide failure given back, and the success counted; `rate_limited`
   * when the account has been logged into too often.
   */
  async succeeded(account: string, address: string): Promise<void> {
    await this.limiter.reset(this.rules.failuresHere, this.pair(account, address));
    await this.limiter.release(this.rules.failures, account);
    const refused = refusal(
      await this.limiter.hit(this.rules.successes, account),
      "too many logins to this account, retry later",
    );
    if (refused) throw refused;
  }

  /** Forgets every login counter of a username (erasure of its owner); returns how many went. */
  async forgetFailedLogins(username: string): Promise<number> {
    const { successes, failures, failuresHere } = this.rules;
    return (
      (await this.limiter.reset(successes, username)) +
      (await this.limiter.reset(failures, username)) +
      (await this.limiter.forget(`${failuresHere.name}:${username}@`))
    );
  }
}
