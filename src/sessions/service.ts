import { and, eq, isNull, ne, sql } from "drizzle-orm";
import { settledWithin } from "../../actors/index.ts";
import type { AccountService } from "../accounts/service.ts";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import type { Db, Tx } from "../db/index.ts";
import { accounts, devices, refreshTokens } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import type { Logger } from "../observability/logger.ts";
import { TokenIssuer } from "./tokens.ts";

/** What a successful login or refresh returns (docs/PROTOCOL.md, POST /v1/sessions). */
export interface SessionTokens {
  userId: string;
  deviceId: number;
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
}

/**
 * What sessions need of the device registry (`DeviceService` provides it): declared here so that
 * sessions never import the devices feature, whose routes import sessions' auth.
 */
export interface SessionDevices {
  /**
   * Creates a device with the smallest free id (1-127) inside `tx`; `conflict` when none is left,
   * `unauthorized` when the account is gone. `added` runs its listeners once `tx` committed.
   */
  createIn(tx: Tx, userId: string, registrationId: number, name: string | null): Promise<number>;
  /** Tells the node a device `createIn` made exists (its transaction committed). */
  added(userId: string, deviceId: number): Promise<void>;
  /** The device's token generation, or undefined when it does not exist. */
  tokenGeneration(userId: string, deviceId: number): Promise<number | undefined>;
  /** Marks the device as seen now. */
  touch(userId: string, deviceId: number): Promise<void>;
  /** Invalidates every access token issued to the device so far. */
  revokeTokens(userId: string, deviceId: number): Promise<void>;
  /** The account's devices. */
  list(userId: string): Promise<{ deviceId: number }[]>;
  /** The token generation of every device of these users, in one query; a missing device has no row. */
  tokenGenerations(
    userIds: readonly string[],
  ): Promise<{ userId: string; deviceId: number; generation: number }[]>;
  /** Removes a device (its keys and refresh tokens go with it); `not_found` when it does not exist. */
  remove(userId: string, deviceId: number): Promise<void>;
}

/**
 * The one revocation port: closes a device's open sockets on whichever node holds them, with close
 * code 4401 (`CloseCode.revoked`). The node wires it to `NodeLink.close`; every revocation (refresh
 * token reuse, password change, the identity provider's logout) calls it after the transaction that
 * made the tokens invalid has committed (`revokeDevice`, `revokeAccount`, `changePassword`). A close
 * may be lost (a node cut off from the others) or fail (Redis away): the revocation stands, and each
 * node's `SocketRevalidation` closes the socket within its period (WS_REVALIDATE_INTERVAL_SECONDS).
 * `generationBelow`: only sockets authenticated with a token of an older generation than this (the
 * device's generation after the revocation) are closed, so a close that reaches another node late
 * spares a socket already opened with a token issued after the revocation.
 */
export type CloseDeviceSockets = (
  userId: string,
  deviceId: number,
  generationBelow?: number,
) => Promise<void>;

/** Which device a session is for: an existing one by id, or a new one (registrationId required). */
export interface DeviceChoice {
  deviceId?: number;
  registrationId?: number;
  deviceName?: string;
}

/** The authenticated caller of a request. */
export interface Principal {
  userId: string;
  deviceId: number;
}

/** How sessions are kept, from the configuration, and the ports they report to. */
export interface SessionOptions {
  /** Lifetime of a refresh token, days (`REFRESH_TOKEN_TTL_DAYS`). */
  refreshTtlDays: number;
  /** A spent refresh token presented again within this many seconds gets the same successor (`REFRESH_GRACE_SECONDS`; 0: never). */
  refreshGraceSeconds?: number;
  audit?: AuditTrail;
  closeSockets?: CloseDeviceSockets;
  /** Where a failed close of a revoked device's sockets is reported (it is not thrown). */
  logger?: Pick<Logger, "warn">;
  /**
   * Users whose erasure has started (src/fence): no session starts or refreshes for them and their
   * access tokens are refused (`unauthorized`, "account erased", as the WebSocket upgrade answers).
   */
  erasing?: ErasureFence;
}

/** The refusal of a user whose erasure has started, wherever a session would start or be used. */
const ERASED = "account erased";

/** A revoked device whose sockets are to be closed: those older than `generationBelow` (all if absent). */
interface RevokedDevice {
  deviceId: number;
  generationBelow?: number;
}

/**
 * How long a revocation's answer waits for its socket closes. A close to a node behind a broker
 * outage can wait for the broker for many seconds; it goes on after the answer, and a lost one is
 * bounded by the revalidation (`SocketRevalidation`).
 */
const CLOSE_WAIT_MS = 3_000;

/** What the refresh transaction decided; the revocation of a reuse runs after it committed. */
type RefreshOutcome =
  | {
      kind: "issued";
      userId: string;
      deviceId: number;
      generation: number;
      issuedAt: number;
      refreshToken: string;
      /** The token was spent already: its successor handed out again within the grace window. */
      replayed?: boolean;
    }
  | { kind: "expired" }
  | { kind: "unknown" }
  | { kind: "erased" }
  | { kind: "reused"; userId: string; deviceId: number };

/**
 * What `SessionService.authenticateSession` asks of a budget on the way (the WebSocket upgrade's
 * connect budgets, `Gateway`): only a connect whose token is current spends the device's budget,
 * so an old token (revoked by a password change or a reuse) cannot lock its device out.
 */
export interface ConnectAdmission {
  /** Before the device is read, spending nothing: throws to refuse one already past a budget. */
  check(principal: Principal): Promise<void>;
  /** The token was refused after the device was read (revoked, or its device removed). */
  refused(principal: Principal): Promise<void>;
  /** The token is current: spends the budgets; throws to refuse one past them. */
  spend(principal: Principal): Promise<void>;
}

/** Login, refresh with rotation and reuse detection, and authentication of access tokens. */
export class SessionService {
  private readonly refreshTtlDays: number;
  private readonly refreshGraceMs: number;
  private readonly audit?: AuditTrail;
  private readonly closeSockets?: CloseDeviceSockets;
  private readonly logger?: Pick<Logger, "warn">;
  private readonly erasing?: ErasureFence;

  constructor(
    private readonly db: Db,
    private readonly accounts: AccountService,
    private readonly devices: SessionDevices,
    private readonly tokens: TokenIssuer,
    options: SessionOptions,
  ) {
    this.refreshTtlDays = options.refreshTtlDays;
    this.refreshGraceMs = (options.refreshGraceSeconds ?? 0) * 1000;
    this.audit = options.audit;
    this.closeSockets = options.closeSockets;
    this.logger = options.logger;
    this.erasing = options.erasing;
  }

  /** `unauthorized` when the user's erasure has started (the erasure fence). */
  private refuseErased(userId: string): void {
    if (this.erasing?.has(userId)) throw new DomainError("unauthorized", ERASED);
  }

  /**
   * Checks the password (throttled per client address and per account, `PasswordThrottle`), then
   * reuses `deviceId` or creates a new device, and issues tokens for it. `address`: the client's.
   */
  async login(
    input: {
      username: string;
      password: string;
      deviceId?: number;
      registrationId?: number;
      deviceName?: string;
    },
    address: string,
  ): Promise<SessionTokens> {
    const { userId, passwordHash } = await this.accounts.verifyPassword(
      input.username,
      input.password,
      address,
    );
    return this.startSession(userId, input, "password", passwordHash);
  }

  /**
   * Opens a session for a user whose identity was already established (a password, or a sign-in at
   * the identity provider): reuses `deviceId` or creates a device (`registrationId` required), and
   * issues tokens for it. `not_found` for an unknown device, `conflict` for a 128th, `unauthorized`
   * ("account erased") once the user's erasure has started, before anything is written.
   * `verifiedHash`: the password hash a login checked; tokens are issued only if it is still the
   * account's (else `unauthorized`), so a login racing a password change gets nothing that
   * outlives the change. A new device, its refresh token and the `session.login` entry are written
   * in one transaction: a refused check or audit write leaves no device behind, and so no
   * `device.remove` entry for a device the trail never saw created.
   */
  async startSession(
    userId: string,
    device: DeviceChoice,
    method: "password" | "oidc" = "password",
    verifiedHash?: string,
  ): Promise<SessionTokens> {
    this.refuseErased(userId);
    const existing = device.deviceId;
    const created = existing === undefined;
    let target: number | ((tx: Tx) => Promise<number>);
    if (existing === undefined) {
      const { registrationId } = device;
      if (registrationId === undefined) {
        throw new DomainError("invalid", "registrationId is required to create a new device");
      }
      target = (tx) => this.devices.createIn(tx, userId, registrationId, device.deviceName ?? null);
    } else {
      target = existing;
      if ((await this.devices.tokenGeneration(userId, existing)) === undefined) {
        throw new DomainError("not_found", `device ${existing} does not exist`);
      }
      await this.devices.touch(userId, existing);
    }
    const eventFor = (deviceId: number): AuditEvent => ({
      action: "session.login",
      actor: { user: userId },
      subject: userId,
      details: {
        deviceId,
        newDevice: created,
        ...(method === "password" ? {} : { method }),
      },
    });
    const { tokens, audited } = await this.issue(userId, target, verifiedHash, eventFor);
    if (created) await this.devices.added(userId, tokens.deviceId);
    // A trail that cannot write inside the transaction: recorded after the commit.
    if (!audited) await this.audit?.record(eventFor(tokens.deviceId));
    return tokens;
  }

  /**
   * Spends a refresh token and issues a new pair (rotation). A token presented a second time means
   * it was copied: every token of that device is revoked, its sockets are closed (4401), and the
   * caller must log in again — except within the grace window (`refreshGraceSeconds` after it was
   * spent), where it gets the same successor pair again, so a client whose two refreshes crossed
   * does not sign itself out; once that successor is spent too, or the window is over, the rule
   * holds again. `unauthorized` for an unknown, reused or expired token, or one of a user whose
   * erasure has started (nothing is spent then); an expired one is deleted, so presenting it again
   * is never taken for a copy.
   *
   * Race-safe on PostgreSQL: the spend is one conditional UPDATE, so of concurrent presentations
   * exactly one spends the row and the others wait for its transaction (row lock), then find it
   * spent, with its successor committed; PGlite runs transactions one at a time.
   */
  async refresh(refreshToken: string): Promise<SessionTokens> {
    const hash = TokenIssuer.hashRefreshToken(refreshToken);
    const successor = this.tokens.successorOf(refreshToken);
    const outcome = await this.db.transaction(async (tx): Promise<RefreshOutcome> => {
      // The device row first (as `revokeDevice` takes it): a revocation runs wholly before this
      // (the token is gone) or after (it deletes the successor written here).
      const [owner] = await tx
        .select({ userId: refreshTokens.userId, deviceId: refreshTokens.deviceId })
        .from(refreshTokens)
        .where(eq(refreshTokens.tokenHash, hash));
      if (!owner) return { kind: "unknown" };
      if (this.erasing?.has(owner.userId)) return { kind: "erased" };
      await tx
        .select({ generation: devices.tokenGeneration })
        .from(devices)
        .where(and(eq(devices.userId, owner.userId), eq(devices.deviceId, owner.deviceId)))
        .for("share");
      const now = Date.now();
      const [spent] = await tx
        .update(refreshTokens)
        .set({ spentAt: new Date(now) })
        .where(and(eq(refreshTokens.tokenHash, hash), isNull(refreshTokens.spentAt)))
        .returning();
      if (spent) {
        if (spent.expiresAt.getTime() <= now) {
          // Gone rather than spent: presented again (a retry, another process of the same client),
          // it is unknown, not a reuse that would revoke a device since signed in again.
          await tx.delete(refreshTokens).where(eq(refreshTokens.tokenHash, hash));
          return { kind: "expired" };
        }
        const { userId, deviceId } = spent;
        const [device] = await tx
          .select({ generation: devices.tokenGeneration })
          .from(devices)
          .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
        if (!device) return { kind: "unknown" };
        await this.storeRefreshToken(tx, successor.hash, userId, deviceId, now, new Date(now));
        return {
          kind: "issued",
          userId,
          deviceId,
          generation: device.generation,
          issuedAt: now,
          refreshToken: successor.token,
        };
      }
      const [reused] = await tx.select().from(refreshTokens).where(eq(refreshTokens.tokenHash, hash));
      if (!reused) return { kind: "unknown" };
      const { userId, deviceId } = reused;
      // The clock again: `now` was read before the spend above waited for another presentation's
      // row lock, and may come before that presentation's spend. Read then, a spend 0 ms (or less)
      // ago counted as within even a 0 s window, and two presentations at once were both honoured.
      const spentAgo = reused.spentAt ? Date.now() - reused.spentAt.getTime() : Number.POSITIVE_INFINITY;
      if (this.refreshGraceMs > 0 && spentAgo <= this.refreshGraceMs) {
        // Within the window: the successor again, if it is still the device's live token.
        const [next] = await tx
          .select({ createdAt: refreshTokens.createdAt, generation: devices.tokenGeneration })
          .from(refreshTokens)
          .innerJoin(
            devices,
            and(eq(devices.userId, refreshTokens.userId), eq(devices.deviceId, refreshTokens.deviceId)),
          )
          .where(and(eq(refreshTokens.tokenHash, successor.hash), isNull(refreshTokens.spentAt)));
        if (next) {
          const issuedAt = next.createdAt.getTime();
          return {
            kind: "issued",
            userId,
            deviceId,
            generation: next.generation,
            issuedAt,
            refreshToken: successor.token,
            replayed: true,
          };
        }
      }
      return { kind: "reused", userId, deviceId };
    });
    switch (outcome.kind) {
      case "issued": {
        const { userId, deviceId, generation, issuedAt, refreshToken: next } = outcome;
        // A spent token honoured within the grace window: most likely the client's own crossing
        // refreshes, but also what a copied token presented soon after the owner's would look like.
        // Recorded after the transaction, which wrote nothing (the spend was an earlier one's), and
        // before the tokens are handed out: a failed write or a node dying here hands out nothing.
        if (outcome.replayed)
          await this.audit?.record({
            action: "session.refresh_replayed",
            actor: "system",
            subject: userId,
            details: { deviceId },
          });
        // The same claims and issue time: a presentation within the grace window gets the same token.
        return this.sessionTokens(userId, deviceId, generation, next, issuedAt);
      }
      case "expired":
        throw new DomainError("unauthorized", "refresh token has expired");
      case "unknown":
        throw new DomainError("unauthorized", "refresh token is not valid");
      case "erased":
        throw new DomainError("unauthorized", ERASED);
      case "reused":
        // The reuse's detection wrote nothing; its revocation and entry commit together.
        await this.revokeDevice(outcome.userId, outcome.deviceId, {
          action: "session.refresh_reused",
          actor: "system",
          subject: outcome.userId,
          details: { deviceId: outcome.deviceId },
        });
        throw new DomainError("unauthorized", "refresh token is not valid");
    }
  }

  /** The principal named by a valid access token whose device still exists and was not revoked. */
  async authenticate(accessToken: string): Promise<Principal> {
    return (await this.authenticateSession(accessToken)).principal;
  }

  /**
   * `authenticate`, with what a socket keeps of its token: the device's token generation it names
   * and when it expires (Unix ms). `unauthorized` for a missing, malformed, expired or revoked token,
   * or one of a user whose erasure has started (HTTP routes, the WebSocket upgrade, `auth` frames).
   * `admit`, when given (the upgrade's connect budgets, `Gateway`), is asked at three points:
   * `check` once the token's signature and expiry are checked and before the database is read,
   * `refused` when the read finds the token revoked (or its device gone), and `spend` once the token
   * is known current; what `check` or `spend` throws is thrown.
   */
  async authenticateSession(
    accessToken: string,
    admit?: ConnectAdmission,
  ): Promise<{ principal: Principal; generation: number; expiresAt: number }> {
    const claims = await this.tokens.verify(accessToken);
    if (!claims) throw new DomainError("unauthorized", "access token is missing, malformed or expired");
    this.refuseErased(claims.userId);
    const principal = { userId: claims.userId, deviceId: claims.deviceId };
    await admit?.check(principal);
    const generation = await this.devices.tokenGeneration(claims.userId, claims.deviceId);
    if (generation !== claims.generation) {
      await admit?.refused(principal);
      throw new DomainError("unauthorized", "access token was revoked");
    }
    await admit?.spend(principal);
    return {
      principal: { userId: claims.userId, deviceId: claims.deviceId },
      generation,
      expiresAt: claims.expiresAt,
    };
  }

  /**
   * The current token generation of every device of these users (`userId.deviceId` → generation),
   * in one query: a socket whose token names another generation, or a device with no entry
   * (removed), was revoked (`SocketRevalidation`).
   */
  async deviceGenerations(userIds: readonly string[]): Promise<Map<string, number>> {
    const rows = await this.devices.tokenGenerations(userIds);
    return new Map(rows.map((row) => [`${row.userId}.${row.deviceId}`, row.generation]));
  }

  /** True while the device exists and its tokens of `generation` were not revoked since. */
  async isCurrent(principal: Principal, generation: number): Promise<boolean> {
    return (await this.devices.tokenGeneration(principal.userId, principal.deviceId)) === generation;
  }

  /**
   * Revokes every access and refresh token of the device, then closes its sockets on every node
   * (4401), those authenticated with a token from before the revocation (`CloseDeviceSockets`,
   * `generationBelow`: the device's generation after the bump). The tokens go first: a socket opening
   * meanwhile re-checks its token's generation once its presence lease is written, so it either is
   * found by the close or sees the revocation. A close that fails is logged, not thrown: the tokens
   * are revoked, and the revalidation (`SocketRevalidation`) closes what the close missed.
   * `event`, when given: the audit entry of the revocation, written last in its transaction (a
   * failed audit write revokes nothing and is thrown).
   */
  async revokeDevice(userId: string, deviceId: number, event?: AuditEvent): Promise<void> {
    // One transaction, the device row first. A refresh or login issuing for this device holds that
    // row (FOR SHARE, `refresh` and `issue`) until it commits: either it committed before this
    // UPDATE got the row, and the DELETE (a statement started after) sees and deletes its token, or
    // it waits for this commit and then finds its refresh token gone or the account's password
    // changed. As two autocommit statements, a successor committed between them outlived the
    // revocation (test/sessions/issuance-race.test.ts).
    let audited = false;
    const generation = await this.db.transaction(async (tx) => {
      const bumped = await this.revokeTokens(tx, userId, deviceId);
      if (event) audited = await this.recordIn(tx, event);
      return bumped;
    });
    if (event && !audited) await this.audit?.record(event);
    await this.closeRevoked(userId, [{ deviceId, generationBelow: generation }]);
  }

  /**
   * Revokes every access and refresh token of every device of the account in one transaction (the
   * account row first, as a password change takes it), then closes their sockets on every node
   * (4401) as `revokeDevice` does. Returns the ids of the devices revoked (none for an unknown user).
   * `options.first` runs first in that transaction (what it throws rolls everything back and is
   * thrown); `options.audit` makes the revocation's audit entry from the ids revoked, written last
   * in the transaction (a failed audit write revokes nothing and is thrown).
   */
  async revokeAccount(
    userId: string,
    options: { first?: (tx: Tx) => Promise<void>; audit?: (revoked: number[]) => AuditEvent } = {},
  ): Promise<number[]> {
    let event: AuditEvent | undefined;
    let audited = false;
    const revoked = await this.db.transaction(async (tx) => {
      await options.first?.(tx);
      await tx.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId)).for("update");
      const devicesRevoked = await this.revokeDevicesOf(tx, userId);
      event = options.audit?.(devicesRevoked.map((device) => device.deviceId));
      if (event) audited = await this.recordIn(tx, event);
      return devicesRevoked;
    });
    if (event && !audited) await this.audit?.record(event);
    await this.closeRevoked(
      userId,
      revoked.map(({ deviceId, generation }) => ({ deviceId, generationBelow: generation })),
    );
    return revoked.map((device) => device.deviceId);
  }

  /**
   * `POST /v1/me/password`: checks `currentPassword` (throttled like a login of the account from
   * `address`, `PasswordThrottle`), then in one transaction stores the new password, re-keys the
   * calling device and — unless `logoutDevices` is false — revokes every token of every other device
   * of the account; after the commit, the revoked devices' sockets are closed on every node (4401).
   * `generation`: the token generation of the access token the request was authenticated with
   * (`authenticateSession`).
   * The calling device is always re-keyed: a login may name an existing device id, so another
   * session on the caller's device id cannot be told from the caller's; every token of that device
   * issued before is refused, its sockets are closed (4401), and the caller gets the one new session
   * returned (`SessionTokens`, as a login's).
   * The transaction writes only if the password is still the one checked and the device is still at
   * `generation`: of two changes that checked the same password, the second to store is refused
   * (each would otherwise revoke the other's device, both callers keep a session, the password is
   * one of theirs), and a change whose device was removed or revoked since the request was
   * authenticated (a refresh token's reuse, the identity provider's logout) changes nothing.
   * `unauthorized` for a wrong password, a password changed meanwhile, or a device removed or revoked
   * meanwhile; `forbidden` for an account without a password (identity provider) or with passwords
   * disabled; `rate_limited` past a budget; none of them changes anything. `revoked`: the ids of the
   * other devices revoked. The password and every revocation commit together or not at all; a close
   * that fails afterwards (a node cut off, Redis away) is logged, and the revalidation
   * (`SocketRevalidation`) closes those sockets within its period.
   */
  async changePassword(
    principal: Principal,
    generation: number,
    input: { currentPassword: string; newPassword: string; logoutDevices?: boolean },
    address: string,
  ): Promise<{ tokens: SessionTokens; revoked: number[] }> {
    const change = await this.accounts.preparePasswordChange(
      principal.userId,
      input.currentPassword,
      input.newPassword,
      address,
    );
    const { tokens, others } = await this.rekey(
      principal.userId,
      principal.deviceId,
      generation,
      (tx) => this.accounts.storePasswordChange(tx, principal.userId, change),
      input.logoutDevices !== false,
      (revokedOthers) => ({
        action: "account.password_changed",
        actor: { user: principal.userId },
        subject: principal.userId,
        details: { deviceId: principal.deviceId, revokedDevices: revokedOthers.length },
      }),
    );
    await this.closeRevoked(
      principal.userId,
      others.map(({ deviceId, generation }) => ({ deviceId, generationBelow: generation })),
    );
    return { tokens, revoked: others.map((device) => device.deviceId) };
  }

  /**
   * Runs `first` (the password change's write, which takes the account row first, as a login's
   * `issue` does), then revokes every token of the device (as `revokeDevice`), with `revokeOthers`
   * every token of the account's other devices too (returned as `others`, with their new
   * generations), and issues the device's one new session, all in one transaction; then closes the
   * device's sockets opened with the revoked tokens on every node (4401); the other devices' sockets
   * are the caller's to close. The device row is updated only while it is at `generation`: a refresh or
   * login issuing for it (FOR SHARE on the row, `refresh` and `issue`) committed before, and its
   * refresh token is deleted here, or it waits for this commit and finds its token gone (a refresh)
   * or the password changed (a login). The new refresh token is written after the DELETE, so it is
   * the device's only one. `unauthorized` when the device is gone (removed meanwhile) or was revoked
   * since its token of `generation` was checked: nothing is written, nothing is issued.
   * `audit` makes the change's audit entry from the other devices revoked; it is written last in the
   * transaction (a failed audit write changes nothing and is thrown), or after the commit by a trail
   * that cannot write inside it.
   */
  private async rekey(
    userId: string,
    deviceId: number,
    generation: number,
    first: (tx: Pick<Db, "update">) => Promise<void>,
    revokeOthers: boolean,
    audit: (others: number[]) => AuditEvent,
  ): Promise<{ tokens: SessionTokens; others: { deviceId: number; generation: number }[] }> {
    const { token, hash } = TokenIssuer.mintRefreshToken();
    let audited = false;
    const { next, others, event } = await this.db.transaction(async (tx) => {
      await first(tx);
      const bumped = await this.revokeTokens(tx, userId, deviceId, generation);
      if (bumped === undefined) throw new DomainError("unauthorized", "access token was revoked");
      const others = revokeOthers ? await this.revokeDevicesOf(tx, userId, deviceId) : [];
      await this.storeRefreshToken(tx, hash, userId, deviceId, Date.now());
      const event = audit(others.map((device) => device.deviceId));
      audited = await this.recordIn(tx, event);
      return { next: bumped, others, event };
    });
    if (!audited) await this.audit?.record(event);
    await this.closeRevoked(userId, [{ deviceId, generationBelow: next }]);
    return { tokens: await this.sessionTokens(userId, deviceId, next, token), others };
  }

  /**
   * In `tx`: bumps the token generation of every device of the account but `exceptDeviceId`, and
   * deletes their refresh tokens, devices first (as `revokeTokens`). Returns each device revoked
   * with its new generation.
   */
  private async revokeDevicesOf(
    tx: Tx,
    userId: string,
    exceptDeviceId?: number,
  ): Promise<{ deviceId: number; generation: number }[]> {
    // `and` drops an undefined condition: without `exceptDeviceId`, every device of the account.
    const except = <T extends typeof devices.deviceId | typeof refreshTokens.deviceId>(column: T) =>
      exceptDeviceId === undefined ? undefined : ne(column, exceptDeviceId);
    const bumped = await tx
      .update(devices)
      .set({ tokenGeneration: sql`${devices.tokenGeneration} + 1` })
      .where(and(eq(devices.userId, userId), except(devices.deviceId)))
      .returning({ deviceId: devices.deviceId, generation: devices.tokenGeneration });
    await tx
      .delete(refreshTokens)
      .where(and(eq(refreshTokens.userId, userId), except(refreshTokens.deviceId)));
    return bumped.sort((a, b) => a.deviceId - b.deviceId);
  }

  /**
   * After a revocation committed: closes the revoked devices' sockets on every node
   * (`CloseDeviceSockets`), waiting for the closes at most `CLOSE_WAIT_MS`. A close that fails is
   * logged, not thrown: the revocation stands, and the revalidation closes the sockets it missed.
   */
  private async closeRevoked(userId: string, revoked: readonly RevokedDevice[]): Promise<void> {
    const close = this.closeSockets;
    if (!close || revoked.length === 0) return;
    const closing = Promise.allSettled(
      revoked.map(({ deviceId, generationBelow }) => close(userId, deviceId, generationBelow)),
    ).then((results) => {
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed.length === 0) return;
      this.logger?.warn(
        { err: failed[0]?.reason, devices: failed.length },
        "could not close a revoked device's sockets; the socket revalidation closes them",
      );
    });
    await settledWithin(closing, CLOSE_WAIT_MS);
  }

  /**
   * In `tx`: bumps the device's token generation (every access token issued before is refused) and
   * deletes its refresh tokens, the device row first (see `revokeDevice` for why the order). With
   * `onlyAt`, only while the device is still at that generation. Returns the new generation, or
   * undefined when no row was bumped (the device is gone, or past `onlyAt`); the refresh tokens are
   * deleted either way, so a caller that needs the bump throws and rolls both back (`rekey`).
   */
  private async revokeTokens(
    tx: Tx,
    userId: string,
    deviceId: number,
    onlyAt?: number,
  ): Promise<number | undefined> {
    const device = and(eq(devices.userId, userId), eq(devices.deviceId, deviceId));
    const [bumped] = await tx
      .update(devices)
      .set({ tokenGeneration: sql`${devices.tokenGeneration} + 1` })
      .where(onlyAt === undefined ? device : and(device, eq(devices.tokenGeneration, onlyAt)))
      .returning({ generation: devices.tokenGeneration });
    await tx
      .delete(refreshTokens)
      .where(and(eq(refreshTokens.userId, userId), eq(refreshTokens.deviceId, deviceId)));
    return bumped?.generation;
  }

  /**
   * In `tx`: stores a refresh token of the device by its hash (`TokenIssuer.mintRefreshToken`),
   * expiring `REFRESH_TOKEN_TTL_DAYS` after `now` (Unix ms); `createdAt` defaults to the database's
   * clock.
   */
  private async storeRefreshToken(
    tx: Tx,
    tokenHash: string,
    userId: string,
    deviceId: number,
    now: number,
    createdAt?: Date,
  ): Promise<void> {
    await tx.insert(refreshTokens).values({
      tokenHash,
      userId,
      deviceId,
      ...(createdAt ? { createdAt } : {}),
      expiresAt: new Date(now + this.refreshTtlDays * 86_400_000),
    });
  }

  /**
   * A session's answer (`POST /v1/sessions`'s shape): an access token with the device's `generation`,
   * signed as of `issuedAt` (Unix ms; now if absent), beside the refresh token in clear.
   */
  private async sessionTokens(
    userId: string,
    deviceId: number,
    generation: number,
    refreshToken: string,
    issuedAt?: number,
  ): Promise<SessionTokens> {
    return {
      userId,
      deviceId,
      accessToken: await this.tokens.sign({ userId, deviceId, generation }, issuedAt),
      refreshToken,
      expiresIn: this.tokens.accessTtlSeconds,
    };
  }

  /**
   * Issues the device's tokens: in one transaction, checks `verifiedHash` (when given) is still the
   * account's, holds the device row (created first when `target` is a function) and stores a new
   * refresh token, then writes `eventFor(deviceId)` last (the session's audit entry: no tokens, and
   * no new device, without it). `audited`: false when the trail cannot write
   * inside a transaction (the caller records the entry after the commit).
   */
  private async issue(
    userId: string,
    /** The device's id, or how to create it inside the transaction (before anything else there). */
    target: number | ((tx: Tx) => Promise<number>),
    verifiedHash: string | undefined,
    eventFor: (deviceId: number) => AuditEvent,
  ): Promise<{ tokens: SessionTokens; audited: boolean }> {
    const { token, hash } = TokenIssuer.mintRefreshToken();
    let audited = false;
    let deviceId = typeof target === "number" ? target : 0;
    const generation = await this.db.transaction(async (tx) => {
      // The account's row FOR UPDATE first (`createIn`), as a login creating a device always took it.
      if (typeof target !== "number") deviceId = await target(tx);
      if (verifiedHash !== undefined) {
        // A password change (an UPDATE of this row) waits for this transaction, or committed before it.
        const [account] = await tx
          .select({ passwordHash: accounts.passwordHash })
          .from(accounts)
          .where(eq(accounts.id, userId))
          .for("share");
        if (account?.passwordHash !== verifiedHash)
          throw new DomainError("unauthorized", "wrong username or password");
      }
      // Held until commit: a revocation of this device (`revokeDevice`) runs wholly before or after.
      const [device] = await tx
        .select({ generation: devices.tokenGeneration })
        .from(devices)
        .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)))
        .for("share");
      if (!device) throw new DomainError("not_found", `device ${deviceId} does not exist`);
      await this.storeRefreshToken(tx, hash, userId, deviceId, Date.now());
      audited = await this.recordIn(tx, eventFor(deviceId));
      return device.generation;
    });
    return { tokens: await this.sessionTokens(userId, deviceId, generation, token), audited };
  }

  /**
   * Writes `event` inside `tx` (`AuditTrail.recordIn`), as the transaction's last step: the change
   * and its entry commit together, or neither does (a failed write is thrown and rolls `tx` back).
   * True when written; false without a trail, or with one that cannot write inside a transaction
   * (the caller records after the commit then).
   */
  private async recordIn(tx: Tx, event: AuditEvent): Promise<boolean> {
    if (!this.audit?.recordIn) return false;
    await this.audit.recordIn(tx, [event]);
    return true;
  }
}
