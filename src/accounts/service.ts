import { and, eq } from "drizzle-orm";
import { isUniqueViolation } from "../db/errors.ts";
import type { Db } from "../db/index.ts";
import { accounts } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import type { PasswordThrottle } from "./password-throttle.ts";
import type { RegistrationGate } from "./registration.ts";

/** argon2id cost of new hashes (KiB, passes); verification reads the cost stored in each hash. */
export interface PasswordHashCost {
  memoryCost: number;
  timeCost: number;
}

/** The refusal of every password operation when REGISTRATION=oidc-only. */
export const PASSWORDS_DISABLED =
  "passwords are disabled on this server: sign in with the organisation's identity provider (GET /v1/oidc/authorize, or POST /v1/oidc/device)";

/**
 * Accounts: creation and password checks. Passwords are hashed with argon2id (Bun.password).
 * Accounts provisioned by the identity provider have no password hash, and no password matches them.
 * Creation goes through the `RegistrationGate` (per-address budget, `REGISTRATION` mode, invite
 * tokens) before anything is hashed; every password check goes through the `PasswordThrottle`
 * (counted before the hash is compared), so the only way to test a password is a throttled one.
 */
export class AccountService {
  /** Compared against when the username is unknown, so a wrong username costs the same time as a wrong password. */
  private decoyHash: Promise<string> | undefined;

  private readonly throttle: PasswordThrottle;
  private readonly registration: RegistrationGate;
  private readonly cost: PasswordHashCost;

  private readonly erasing?: ErasureFence;

  constructor(
    private readonly db: Db,
    deps: {
      throttle: PasswordThrottle;
      registration: RegistrationGate;
      cost?: PasswordHashCost;
      /** Users whose erasure has started: they cannot sign in (`unauthorized`, as a wrong password). */
      erasing?: ErasureFence;
    },
  ) {
    this.erasing = deps.erasing;
    this.throttle = deps.throttle;
    this.registration = deps.registration;
    this.cost = deps.cost ?? { memoryCost: 65_536, timeCost: 2 };
  }

  /** REGISTRATION=oidc-only: every password operation is refused with `forbidden`. */
  private requirePasswords(): void {
    if (this.registration.mode === "oidc-only") throw new DomainError("forbidden", PASSWORDS_DISABLED);
  }

  private hash(password: string): Promise<string> {
    return Bun.password.hash(password, { algorithm: "argon2id", ...this.cost });
  }

  /**
   * Creates an account for a client at `address` (`ClientAddresses`): `rate_limited` past the
   * address's sign-up budget, `forbidden` when the registration mode refuses it (closed; invite
   * without a usable token; oidc-only), `conflict` when the username is taken. A refused sign-up
   * spends no token use.
   */
  async register(
    username: string,
    password: string,
    client: { address: string; registrationToken?: string },
  ): Promise<{ userId: string }> {
    this.requirePasswords();
    const spendToken = await this.registration.admit(client.address, client.registrationToken);
    const passwordHash = await this.hash(password);
    try {
      const userId = await this.db.transaction(async (tx) => {
        await spendToken?.(tx);
        const [row] = await tx
          .insert(accounts)
          .values({ username, passwordHash })
          .returning({ id: accounts.id });
        return row.id;
      });
      return { userId };
    } catch (error) {
      if (isUniqueViolation(error)) throw new DomainError("conflict", "username is taken");
      throw error;
    }
  }

  /**
   * The account's id and the stored hash the password matched, else `unauthorized` (same answer
   * for an unknown username); `rate_limited` before any check when the throttle says so. `address`:
   * the client's (`ClientAddresses`). The hash lets a login issue its tokens only while it is still
   * the account's (`SessionService.login`): a password change may land between check and issue.
   */
  async verifyPassword(
    username: string,
    password: string,
    address: string,
  ): Promise<{ userId: string; passwordHash: string }> {
    this.requirePasswords();
    await this.throttle.admit(username, address);
    const [row] = await this.db
      .select({ id: accounts.id, passwordHash: accounts.passwordHash })
      .from(accounts)
      .where(eq(accounts.username, username));
    this.decoyHash ??= this.hash("clearbox-decoy-password");
    // A password-less (identity provider) account is checked against the decoy too: same time, never a match.
    const ok = await Bun.password.verify(password, row?.passwordHash ?? (await this.decoyHash));
    if (!row?.passwordHash || !ok) throw new DomainError("unauthorized", "wrong username or password");
    if (this.erasing?.has(row.id)) throw new DomainError("unauthorized", "wrong username or password");
    await this.throttle.succeeded(username, address);
    return { userId: row.id, passwordHash: row.passwordHash };
  }

  /**
   * Resolves with the stored hash `password` matched when it is the password of `userId` (re-checks
   * before sensitive actions: erasure, password change); `unauthorized` otherwise. Throttled like a
   * login of that account from `address`, sharing its budgets.
   */
  async checkPasswordOf(userId: string, password: string, address: string): Promise<string> {
    this.requirePasswords();
    const [row] = await this.db
      .select({ username: accounts.username, passwordHash: accounts.passwordHash })
      .from(accounts)
      .where(eq(accounts.id, userId));
    if (row && !row.passwordHash) {
      throw new DomainError(
        "forbidden",
        "this account signs in with the identity provider and has no password",
      );
    }
    const account = row?.username ?? userId;
    await this.throttle.admit(account, address);
    if (!row?.passwordHash || !(await Bun.password.verify(password, row.passwordHash))) {
      throw new DomainError("unauthorized", "wrong password");
    }
    await this.throttle.succeeded(account, address);
    return row.passwordHash;
  }

  /**
   * The first half of a password change of `userId`: checks `currentPassword` (`checkPasswordOf`:
   * throttled, `unauthorized` when wrong, `forbidden` for an account without a password) and hashes
   * `newPassword` with the current cost; writes nothing. `currentHash`: the stored hash the current
   * password matched, `newHash`: the one to store. The caller stores it with `storePasswordChange`
   * in its own transaction (`SessionService.changePassword`).
   */
  async preparePasswordChange(
    userId: string,
    currentPassword: string,
    newPassword: string,
    address: string,
  ): Promise<{ currentHash: string; newHash: string }> {
    const currentHash = await this.checkPasswordOf(userId, currentPassword, address);
    return { currentHash, newHash: await this.hash(newPassword) };
  }

  /**
   * The second half: replaces the account's password hash with `change.newHash`, in `tx`, only if it
   * is still `change.currentHash` (a change that checked the same password and stored first wins; a
   * row lock makes the other wait for its commit). `unauthorized` otherwise, and nothing is written.
   */
  async storePasswordChange(
    tx: Pick<Db, "update">,
    userId: string,
    change: { currentHash: string; newHash: string },
  ): Promise<void> {
    const [stored] = await tx
      .update(accounts)
      .set({ passwordHash: change.newHash })
      .where(and(eq(accounts.id, userId), eq(accounts.passwordHash, change.currentHash)))
      .returning({ id: accounts.id });
    if (!stored) throw new DomainError("unauthorized", "wrong password");
  }

  /** True when the account has a password (false: it signs in with the identity provider only). */
  async hasPassword(userId: string): Promise<boolean> {
    const [row] = await this.db
      .select({ passwordHash: accounts.passwordHash })
      .from(accounts)
      .where(eq(accounts.id, userId));
    return Boolean(row?.passwordHash);
  }
}
