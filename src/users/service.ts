import { eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { accounts } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import { type RateLimiter, type RateLimitRule, spendDeviceThenAccount } from "../ratelimit/index.ts";
import type { Principal } from "../sessions/service.ts";

/**
 * Lookup budget per requesting device. A person adds a contact or opens a chat with a stranger a
 * few times a day; 30 lookups a minute leaves room for a client that resolves the senders of a
 * backlog, and walking the directory at that pace (1,800 names an hour, misses counted too) is
 * slow and visible. Signal-Server limits username lookups per account in the same spirit
 * (its `usernameLookup` limiter).
 */
export const USER_LOOKUP_LIMIT = {
  name: "users.lookup",
  limit: 30,
  windowMs: 60_000,
} satisfies RateLimitRule;

/**
 * Lookup budget per account, over all its devices: four devices' worth. A device costs only a
 * login and an account may have 127, so the budget per device alone would let one account walk
 * the directory at 127 × 30 names a minute. Signal-Server keys its `usernameLookup` limiter on the
 * account for the same reason.
 */
export const USER_LOOKUP_ACCOUNT_LIMIT = {
  name: "users.lookup.account",
  limit: 4 * USER_LOOKUP_LIMIT.limit,
  windowMs: 60_000,
} satisfies RateLimitRule;

/**
 * The user directory: exact lookups only — a username to its user id, a user id to its username.
 * No prefix search and no listing. Every lookup, a miss included, spends one of the requesting
 * device's budget and one of its account's first, so enumeration costs the same per guess whatever
 * the answer, and more devices do not buy more guesses past the account's budget.
 */
export class UserDirectory {
  constructor(
    private readonly db: Db,
    private readonly limiter: RateLimiter,
    private readonly rule: RateLimitRule = USER_LOOKUP_LIMIT,
    private readonly accountRule: RateLimitRule = USER_LOOKUP_ACCOUNT_LIMIT,
    /** Users whose erasure has started: not found, as if they did not exist (their row goes next). */
    private readonly erasing?: ErasureFence,
  ) {}

  /**
   * The account named exactly `username`; `not_found` (404) if none or its erasure has started;
   * `rate_limited` (429) past the budget.
   */
  async byUsername(requester: Principal, username: string): Promise<{ userId: string; username: string }> {
    await this.spend(requester);
    return this.findForAdmin(username);
  }

  /**
   * The account named exactly `username`, for the operator (admin RPC `GET /admin/v1/users?username=`):
   * the id a data-protection request's export or erasure is made with. No budget (the admin token
   * already reaches every account); `not_found` if none or its erasure has started.
   */
  async findForAdmin(username: string): Promise<{ userId: string; username: string }> {
    const [row] = await this.db
      .select({ userId: accounts.id, username: accounts.username })
      .from(accounts)
      .where(eq(accounts.username, username))
      .limit(1);
    if (!row || this.erasing?.has(row.userId))
      throw new DomainError("not_found", "no user with that username");
    return row;
  }

  /**
   * The username of `userId` (a lower-case UUID); `not_found` if no such account or its erasure has
   * started; `rate_limited` past the budget.
   */
  async byId(requester: Principal, userId: string): Promise<{ userId: string; username: string }> {
    await this.spend(requester);
    const [row] = await this.db
      .select({ userId: accounts.id, username: accounts.username })
      .from(accounts)
      .where(eq(accounts.id, userId))
      .limit(1);
    if (!row || this.erasing?.has(row.userId)) throw new DomainError("not_found", "no such user");
    return row;
  }

  /**
   * Spends one lookup of the requesting device's budget, then one of its account's (devices
   * together); `rate_limited` with `retryAfterSeconds` when either is spent. A device refused spends
   * nothing of the account's budget, so one device at its limit does not eat into the others'.
   */
  private async spend(requester: Principal): Promise<void> {
    await spendDeviceThenAccount(
      this.limiter,
      { device: this.rule, account: this.accountRule },
      requester,
      "too many user lookups, retry later",
    );
  }
}
