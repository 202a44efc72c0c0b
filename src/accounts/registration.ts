import { randomBytes } from "node:crypto";
import { and, asc, eq, gt, isNull, lt, or, sql } from "drizzle-orm";
import type { RegistrationMode } from "../config/index.ts";
import { isUniqueViolation } from "../db/errors.ts";
import type { Db } from "../db/index.ts";
import { registrationTokens } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { type RateLimiter, type RateLimitRule, spendOrRefuse } from "../ratelimit/index.ts";

/** Accounts one client address may create per hour, unless configured (`REGISTRATIONS_PER_ADDRESS`). */
export const DEFAULT_REGISTRATIONS_PER_ADDRESS = 10;

/** An invite token as the admin RPC shows it (times in Unix ms). */
export interface RegistrationToken {
  token: string;
  /** Accounts it may create; null: no limit. */
  usesAllowed: number | null;
  /** Accounts created with it so far. */
  completed: number;
  /** When it stops working; null: never. */
  expiresAt: number | null;
  createdAt: number;
}

/** A transaction (or the database) that can spend a token. */
type Writer = Pick<Db, "update">;

function shown(row: typeof registrationTokens.$inferSelect): RegistrationToken {
  return {
    token: row.token,
    usesAllowed: row.usesAllowed,
    completed: row.completed,
    expiresAt: row.expiresAt?.getTime() ?? null,
    createdAt: row.createdAt.getTime(),
  };
}

/** Tokens that can still create an account at `now`. */
const usable = (now: Date) =>
  and(
    or(
      isNull(registrationTokens.usesAllowed),
      lt(registrationTokens.completed, registrationTokens.usesAllowed),
    ),
    or(isNull(registrationTokens.expiresAt), gt(registrationTokens.expiresAt, now)),
  );

/** Invite tokens in PostgreSQL: issued, listed and revoked over the admin RPC, spent by registration. */
export class RegistrationTokens {
  constructor(private readonly db: Db) {}

  /**
   * Issues a token: `token` as given (the admin's choice) or 24 random base64url characters.
   * `conflict` when that token exists; `invalid` when `expiresAt` is not in the future.
   */
  async create(options: {
    token?: string;
    usesAllowed?: number | null;
    expiresAt?: number | null;
  }): Promise<RegistrationToken> {
    if (options.expiresAt != null && options.expiresAt <= Date.now()) {
      throw new DomainError("invalid", "expiresAt: must be in the future");
    }
    const token = options.token ?? randomBytes(18).toString("base64url");
    try {
      const [row] = await this.db
        .insert(registrationTokens)
        .values({
          token,
          usesAllowed: options.usesAllowed ?? null,
          expiresAt: options.expiresAt == null ? null : new Date(options.expiresAt),
        })
        .returning();
      return shown(row);
    } catch (error) {
      if (isUniqueViolation(error)) throw new DomainError("conflict", "that token exists");
      throw error;
    }
  }

  /** Every token, oldest first; `valid` filters to the usable (true) or the spent and expired (false). */
  async list(valid?: boolean): Promise<RegistrationToken[]> {
    const now = new Date();
    const rows = await this.db
      .select()
      .from(registrationTokens)
      .where(valid === undefined ? undefined : valid ? usable(now) : sql`not (${usable(now)})`)
      .orderBy(asc(registrationTokens.createdAt), asc(registrationTokens.token));
    return rows.map(shown);
  }

  /** Revokes a token; `not_found` when there is none. */
  async revoke(token: string): Promise<void> {
    const removed = await this.db
      .delete(registrationTokens)
      .where(eq(registrationTokens.token, token))
      .returning({ token: registrationTokens.token });
    if (removed.length === 0) throw new DomainError("not_found", "no such registration token");
  }

  /** Whether the token would create an account now (a cheap read before the password is hashed). */
  async isUsable(token: string): Promise<boolean> {
    const [row] = await this.db
      .select({ token: registrationTokens.token })
      .from(registrationTokens)
      .where(and(eq(registrationTokens.token, token), usable(new Date())));
    return row !== undefined;
  }

  /**
   * Spends one use, atomically (a conditional UPDATE: of two registrations racing for the last use,
   * one waits for the other's row lock and then finds it spent). Run it in the transaction that
   * inserts the account, so a failed insert gives the use back. `forbidden` when nothing was left.
   */
  async spend(writer: Writer, token: string): Promise<void> {
    const spent = await writer
      .update(registrationTokens)
      .set({ completed: sql`${registrationTokens.completed} + 1` })
      .where(and(eq(registrationTokens.token, token), usable(new Date())))
      .returning({ token: registrationTokens.token });
    if (spent.length === 0) throw new DomainError("forbidden", "the invite token is not valid");
  }
}

/**
 * The registration policy of `POST /v1/accounts`: a per-address budget counted first (before the
 * password is hashed: argon2id is what a sign-up flood would spend), then the mode.
 */
export class RegistrationGate {
  private readonly perAddress: RateLimitRule;

  constructor(
    readonly mode: RegistrationMode,
    private readonly tokens: RegistrationTokens,
    private readonly limiter: RateLimiter,
    registrationsPerAddress: number = DEFAULT_REGISTRATIONS_PER_ADDRESS,
  ) {
    this.perAddress = { name: "registrations", limit: registrationsPerAddress, windowMs: 60 * 60_000 };
  }

  /**
   * Admits one sign-up from `address`, or refuses it: `rate_limited` past the address's budget,
   * `forbidden` when registration is closed or the invite token is missing or not usable. Returns
   * what must run in the account's insert transaction (spending the token), if anything.
   */
  async admit(
    address: string,
    token: string | undefined,
  ): Promise<((writer: Writer) => Promise<void>) | undefined> {
    await spendOrRefuse(
      this.limiter,
      this.perAddress,
      address,
      "too many accounts created from this address, retry later",
    );
    switch (this.mode) {
      case "open":
        return undefined;
      case "closed":
        throw new DomainError("forbidden", "registration is closed on this server");
      // Accounts come from the identity provider (src/oidc); AccountService refuses every password
      // operation before it gets here, so this is the last line only.
      case "oidc-only":
        throw new DomainError("forbidden", "password registration is disabled on this server");
      case "invite": {
        if (token === undefined) throw new DomainError("forbidden", "registration needs an invite token");
        if (!(await this.tokens.isUsable(token))) {
          throw new DomainError("forbidden", "the invite token is not valid");
        }
        return (writer) => this.tokens.spend(writer, token);
      }
      default: {
        const unknown: never = this.mode;
        throw new Error(`unknown registration mode ${String(unknown)}`);
      }
    }
  }
}
