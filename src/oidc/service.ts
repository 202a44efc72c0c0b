import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { Value } from "@sinclair/typebox/value";
import { and, eq, lt, sql } from "drizzle-orm";
import { AccountModel } from "../accounts/model.ts";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import type { OidcConfig } from "../config/oidc.ts";
import { isUniqueViolation } from "../db/errors.ts";
import type { Db, Tx } from "../db/index.ts";
import { accounts, oidcIdentities, oidcLogoutTokens, oidcSignInCodes } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { Logger } from "../observability/logger.ts";
import { type RateLimiter, type RateLimitRule, spendOrRefuse } from "../ratelimit/index.ts";
import type { DeviceChoice, SessionService, SessionTokens } from "../sessions/service.ts";
import { DeviceCodeSealer } from "./device-code.ts";
import { type BrowserFlow, FlowSealer } from "./flow-cookie.ts";
import {
  type DeviceAuthorization,
  pollInterval,
  type RelyingParty,
  type VerifiedIdentity,
} from "./relying-party.ts";

/** How long a sign-in code may wait for its exchange, seconds. */
export const SIGN_IN_CODE_TTL_SECONDS = 60;
/** RFC 7636 §4.1: 43-128 unreserved characters. */
const CODE_VERIFIER = /^[A-Za-z0-9._~-]{43,128}$/;
/** An S256 challenge: base64url of a SHA-256 digest, no padding. */
const CODE_CHALLENGE = /^[A-Za-z0-9_-]{43}$/;

const sha256Hex = (value: string) => createHash("sha256").update(value).digest("hex");
const s256 = (verifier: string) => createHash("sha256").update(verifier).digest("base64url");

/** Default of OIDC_DEVICE_SIGN_INS_PER_ADDRESS: device sign-ins one client address may start per 15 minutes. */
export const DEFAULT_DEVICE_SIGN_INS_PER_ADDRESS = 30;

/**
 * Budgets of the native flow's calls. Each start and each poll is a request from this server to
 * the provider with its client credentials, made for anyone who asks: unbounded, one client could
 * have the provider throttle ClearBox's client id (and so every user's sign-in) and keep the node's
 * connections to it busy.
 *
 * - `starts`, per client address (`ClientAddresses`): OIDC_DEVICE_SIGN_INS_PER_ADDRESS (default 30)
 *   per 15 minutes, then 429 `rate_limited`.
 * - `pollsPerCode`, per issued device code: the code handed out is sealed (`DeviceCodeSealer`), so
 *   a poll with a code this server did not issue is refused before any budget or the provider is
 *   reached, and one client's polls cannot spend another's. A sign-in polls every `interval` (5 s)
 *   for up to the code's lifetime (commonly 10 minutes: 120 polls); 300 per 15 minutes is a poll
 *   every 3 s. Past it the poll is answered `slow_down` without asking the provider, as RFC 8628
 *   §3.5 lets a client that polls too fast be told.
 * - `pollsPerAddress`: a backstop, every code of one address together, `slow_down` past it:
 *   `starts` × `pollsPerCode` (default 9,000 per 15 minutes): room for every code an address may
 *   start in a window to use its whole budget, against a flood of real codes (some started in an
 *   earlier window) from one address.
 *
 * `limit` of `starts` and `pollsPerAddress` here are the defaults; the service's own follow the
 * configured start budget (`deviceFlowLimits`).
 */
export const DEVICE_FLOW_LIMITS = deviceFlowLimits(DEFAULT_DEVICE_SIGN_INS_PER_ADDRESS);

/** `DEVICE_FLOW_LIMITS` for a start budget of `startsPerAddress` per client address per 15 minutes. */
export function deviceFlowLimits(startsPerAddress: number) {
  const pollsPerCode = 300;
  return {
    starts: { name: "oidc-device-start", limit: startsPerAddress, windowMs: 15 * 60_000 },
    pollsPerCode: { name: "oidc-device-poll-code", limit: pollsPerCode, windowMs: 15 * 60_000 },
    pollsPerAddress: {
      name: "oidc-device-poll",
      limit: startsPerAddress * pollsPerCode,
      windowMs: 15 * 60_000,
    },
  } satisfies Record<string, RateLimitRule>;
}

/** Everything the OIDC feature needs, built once per node. */
export interface OidcServiceDeps {
  db: Db;
  rp: RelyingParty;
  sessions: Pick<SessionService, "startSession" | "revokeAccount">;
  audit?: AuditTrail;
  /** The node's JWT secret: the browser-flow cookie's and the device code's keys are derived from it. */
  secret: string;
  logger: Logger;
  /** Counts the native flow's calls (`DEVICE_FLOW_LIMITS`); none: not limited. */
  limiter?: RateLimiter;
  /** Device sign-ins one client address may start per 15 minutes (OIDC_DEVICE_SIGN_INS_PER_ADDRESS; default 30). */
  deviceSignInsPerAddress?: number;
}

/** The device flow's start, as the client shows it to the user (docs/PROTOCOL.md). */
export type DeviceSignIn = DeviceAuthorization;

/**
 * Sign-in with the organisation's OpenID Connect provider: the browser flow (authorization code +
 * PKCE, ending in a one-time sign-in code sent to the client's return URI), the native flow (device
 * authorization grant), the exchange of sign-in codes for ClearBox sessions, provisioning of
 * accounts linked by (iss, sub), and deprovisioning (back-channel logout, admin call).
 */
export class OidcService {
  private readonly sealer: FlowSealer;
  private readonly deviceCodes: DeviceCodeSealer;
  private readonly deviceLimits: ReturnType<typeof deviceFlowLimits>;
  readonly config: OidcConfig;

  constructor(private readonly deps: OidcServiceDeps) {
    this.sealer = new FlowSealer(deps.secret);
    this.deviceCodes = new DeviceCodeSealer(deps.secret);
    this.deviceLimits = deviceFlowLimits(deps.deviceSignInsPerAddress ?? DEFAULT_DEVICE_SIGN_INS_PER_ADDRESS);
    this.config = deps.rp.config;
  }

  /**
   * Begins a browser sign-in: checks the client's return URI and PKCE challenge, and returns the
   * provider's authorization URL with the sealed flow for the cookie. `invalid` for a return URI
   * that is neither in OIDC_CLIENT_REDIRECT_URIS nor a loopback URI, or a malformed challenge.
   */
  async beginBrowserSignIn(input: {
    redirectUri: string;
    codeChallenge: string;
    codeChallengeMethod?: string;
    prompt?: "login";
  }): Promise<{ location: string; sealedFlow: string }> {
    if (!this.allowedReturnUri(input.redirectUri)) {
      throw new DomainError(
        "invalid",
        "redirect_uri: not a registered client redirect URI (OIDC_CLIENT_REDIRECT_URIS) nor a loopback URI",
      );
    }
    if ((input.codeChallengeMethod ?? "S256") !== "S256") {
      throw new DomainError("invalid", "code_challenge_method: only S256 is supported");
    }
    if (!CODE_CHALLENGE.test(input.codeChallenge)) {
      throw new DomainError(
        "invalid",
        "code_challenge: expected base64url SHA-256 of a code verifier (43 characters)",
      );
    }
    const request = await this.deps.rp.authorizationRequest({ prompt: input.prompt });
    const flow: BrowserFlow = {
      state: request.state,
      nonce: request.nonce,
      codeVerifier: request.codeVerifier,
      returnTo: input.redirectUri,
      codeChallenge: input.codeChallenge,
    };
    return { location: request.url.href, sealedFlow: await this.sealer.seal(flow) };
  }

  /**
   * Completes a browser sign-in at the callback: the flow cookie must be present and intact, the
   * provider's answer must verify (state, code with PKCE, ID token signature, iss, aud, exp, iat,
   * nonce); the account is found by (iss, sub) or provisioned; a one-time sign-in code bound to the
   * client's challenge is minted. Returns where to send the browser. `unauthorized` otherwise, and
   * nothing is created.
   */
  async completeBrowserSignIn(
    callbackParameters: URLSearchParams,
    sealedFlow: string | undefined,
  ): Promise<{ location: string }> {
    const flow = await this.sealer.open(sealedFlow);
    if (!flow) {
      throw new DomainError(
        "unauthorized",
        "no sign-in in progress in this browser (expired, or started elsewhere); start again",
      );
    }
    const identity = await this.deps.rp.completeAuthorization(callbackParameters, flow);
    const userId = await this.accountFor(identity);
    const code = await this.mintSignInCode(userId, flow.codeChallenge);
    const location = new URL(flow.returnTo);
    location.searchParams.set("code", code);
    return { location: location.href };
  }

  /**
   * Begins a native sign-in with the device authorization grant (RFC 8628): what to show the user.
   * The `deviceCode` returned is the provider's sealed (`DeviceCodeSealer`), opaque to the client,
   * good until the provider's `expiresIn`. `address`: the client's (`ClientAddresses`);
   * `rate_limited` past its `starts` budget (OIDC_DEVICE_SIGN_INS_PER_ADDRESS), before the provider
   * is asked.
   */
  async beginDeviceSignIn(address: string): Promise<DeviceSignIn> {
    if (this.deps.limiter) {
      await spendOrRefuse(
        this.deps.limiter,
        this.deviceLimits.starts,
        address,
        "too many device sign-ins from this address, retry later",
      );
    }
    const started = await this.deps.rp.startDeviceAuthorization();
    return { ...started, deviceCode: await this.deviceCodes.seal(started.deviceCode, started.expiresIn) };
  }

  /**
   * Polls a device sign-in once: pending (wait `interval` seconds), or done with a one-time sign-in
   * code (the account found by (iss, sub) or provisioned). `unauthorized` when denied or expired,
   * and at once, without asking the provider or spending a budget, for a `deviceCode` this server
   * did not issue (forged, altered, or past its `expiresIn`). Past the code's `pollsPerCode`, or
   * the backstop `pollsPerAddress` of `address` (the client's), the answer is `slow_down` (wait
   * `interval` + 5 s, at most 600) and the provider is not asked.
   */
  async pollDeviceSignIn(
    deviceCode: string,
    interval: number,
    address: string,
  ): Promise<{ status: "pending" | "slow_down"; interval: number } | { status: "done"; code: string }> {
    const issued = await this.deviceCodes.open(deviceCode);
    if (!issued) {
      throw new DomainError(
        "unauthorized",
        "deviceCode is not one this server issued, or it has expired; start a new sign-in",
      );
    }
    const { limiter } = this.deps;
    const slowDown = { status: "slow_down", interval: pollInterval(interval + 5) } as const;
    // Per code first: polls past a code's own budget do not spend its neighbours' address budget.
    if (limiter && !(await limiter.hit(this.deviceLimits.pollsPerCode, issued.id)).allowed) return slowDown;
    if (limiter && !(await limiter.hit(this.deviceLimits.pollsPerAddress, address)).allowed) return slowDown;
    const poll = await this.deps.rp.pollDeviceAuthorization(issued.deviceCode, interval);
    if (poll.status !== "done") return poll;
    const userId = await this.accountFor(poll.identity);
    return { status: "done", code: await this.mintSignInCode(userId, null) };
  }

  /**
   * Exchanges a one-time sign-in code for a ClearBox session, as `POST /v1/sessions` does after a
   * password: `deviceId` reuses a device, else one is created (`registrationId` required).
   * `unauthorized` for an unknown, spent, expired code, a verifier that does not match, or a code
   * of another account than `userId` (a client that holds an account already names it, so that its
   * `deviceId` can never be taken for another account's device of the same id).
   */
  async exchange(
    input: { code: string; codeVerifier?: string; userId?: string } & DeviceChoice,
  ): Promise<SessionTokens> {
    const userId = await this.consumeSignInCode(input.code, input.codeVerifier);
    if (input.userId !== undefined && input.userId.toLowerCase() !== userId) {
      throw new DomainError("unauthorized", "the sign-in was for another account than this client's");
    }
    return this.deps.sessions.startSession(userId, input, "oidc");
  }

  /**
   * Spends a sign-in code of `userId` as proof of a fresh sign-in at the provider (re-authentication
   * before erasure, for accounts that have no password). `unauthorized` when it is not such a code.
   */
  async reauthenticate(userId: string, code: string, codeVerifier?: string): Promise<void> {
    const owner = await this.consumeSignInCode(code, codeVerifier);
    if (owner !== userId) throw new DomainError("unauthorized", "the sign-in code is not this account's");
  }

  /**
   * Handles a back-channel logout request (OIDC Back-Channel Logout 1.0 §2.5-2.8): validates the
   * logout token, refuses a replayed `jti`, and revokes every device of the user linked to (iss,
   * sub): tokens and live sockets. An unknown subject is a success (nothing to end). `invalid`
   * (400) for a token that does not validate or is replayed. The `jti`, the revocation and its
   * `oidc.logout` audit entry commit in one transaction: a failure (the audit write's too) keeps
   * none of them, so the provider's retry of the same token is not refused as a replay.
   */
  async backChannelLogout(logoutToken: string): Promise<{ devices: number }> {
    const token = await this.deps.rp.verifyLogoutToken(logoutToken);
    if (!token.subject) {
      // ClearBox links accounts by (iss, sub) and keeps no provider session ids.
      throw new DomainError("invalid", "logout_token names no sub; this relying party needs it");
    }
    const { db } = this.deps;
    await db.delete(oidcLogoutTokens).where(lt(oidcLogoutTokens.expiresAt, new Date()));
    const spendJti = async (tx: Db) => {
      const fresh = await tx
        .insert(oidcLogoutTokens)
        .values({ issuer: token.issuer, jti: token.jti, expiresAt: token.replayUntil })
        .onConflictDoNothing()
        .returning({ jti: oidcLogoutTokens.jti });
      if (fresh.length === 0) throw new DomainError("invalid", "logout_token was already used (jti replay)");
    };
    const userId = await this.linkedUser(token.issuer, token.subject);
    if (!userId) {
      await spendJti(db);
      return { devices: 0 };
    }
    const devices = await this.revokeEverywhere(userId, spendJti, (revoked) => ({
      action: "oidc.logout",
      actor: "system",
      subject: userId,
      details: { via: "backchannel", devices: revoked.length },
    }));
    return { devices };
  }

  /**
   * The admin's deprovisioning call for providers without back-channel logout: revokes every
   * device (tokens and live sockets) of the account linked to `subject` at the configured issuer.
   * `not_found` when no account is linked to it. The revocation and its `oidc.logout` audit entry
   * commit together or not at all.
   */
  async logoutSubject(subject: string): Promise<{ userId: string; devices: number }> {
    const userId = await this.linkedUser(this.config.issuer, subject);
    if (!userId) throw new DomainError("not_found", "no account is linked to that subject");
    const devices = await this.revokeEverywhere(userId, undefined, (revoked) => ({
      action: "oidc.logout",
      actor: "admin",
      subject: userId,
      details: { via: "admin", devices: revoked.length },
    }));
    return { userId, devices };
  }

  private allowedReturnUri(value: string): boolean {
    let uri: URL;
    try {
      uri = new URL(value);
    } catch {
      return false;
    }
    if (uri.hash) return false;
    if (this.config.clientRedirectUris.includes(value)) return true;
    // RFC 8252 §7.3 and §8.3: a native app's loopback listener, on any port, by IP literal.
    return uri.protocol === "http:" && (uri.hostname === "127.0.0.1" || uri.hostname === "[::1]");
  }

  private async linkedUser(issuer: string, subject: string): Promise<string | undefined> {
    const [row] = await this.deps.db
      .select({ userId: oidcIdentities.userId })
      .from(oidcIdentities)
      .where(and(eq(oidcIdentities.issuer, issuer), eq(oidcIdentities.subject, subject)));
    return row?.userId;
  }

  /**
   * The account linked to (iss, sub), or a new one provisioned from the username claim. Never
   * links by username or e-mail: a username already taken (by a password account or another
   * subject) is refused with `conflict`, and nothing is created. The account, its link and its
   * `oidc.provision` audit entry commit together or not at all.
   */
  private async accountFor(identity: VerifiedIdentity): Promise<string> {
    const { db, audit } = this.deps;
    const known = await this.linkedUser(identity.issuer, identity.subject);
    if (known) {
      await db
        .update(oidcIdentities)
        .set({ lastSignInAt: sql`now()` })
        .where(and(eq(oidcIdentities.issuer, identity.issuer), eq(oidcIdentities.subject, identity.subject)));
      return known;
    }
    const provisioned = (userId: string): AuditEvent => ({
      action: "oidc.provision",
      actor: { user: userId },
      subject: userId,
      details: {},
    });
    const claim = this.config.usernameClaim;
    const username = identity.claims[claim];
    if (typeof username !== "string") {
      throw new DomainError(
        "forbidden",
        `the identity provider sent no ${claim} claim to make a username from; ask the operator to map one (OIDC_USERNAME_CLAIM)`,
      );
    }
    if (!Value.Check(AccountModel.username, username)) {
      throw new DomainError(
        "forbidden",
        `the ${claim} claim does not fit ClearBox's username rule (3-32 of a-z 0-9 _ . -); ask the operator`,
      );
    }
    let audited = false;
    try {
      const userId = await db.transaction(async (tx) => {
        const [account] = await tx
          .insert(accounts)
          .values({ username, passwordHash: null })
          .returning({ id: accounts.id });
        await tx
          .insert(oidcIdentities)
          .values({ issuer: identity.issuer, subject: identity.subject, userId: account.id });
        // Last in the provisioning's own transaction: no account without its entry.
        if (audit?.recordIn) {
          await audit.recordIn(tx, [provisioned(account.id)]);
          audited = true;
        }
        return account.id;
      });
      // A trail that cannot write inside the transaction: recorded after the commit.
      if (!audited) await audit?.record(provisioned(userId));
      return userId;
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      // A concurrent first sign-in of the same subject may have won the race: that is its account.
      const raced = await this.linkedUser(identity.issuer, identity.subject);
      if (raced) return raced;
      throw new DomainError(
        "conflict",
        "the username from the identity provider is already taken by another ClearBox account; it is not linked automatically, ask the operator",
      );
    }
  }

  private async mintSignInCode(userId: string, codeChallenge: string | null): Promise<string> {
    const code = randomBytes(32).toString("base64url");
    const { db } = this.deps;
    await db.delete(oidcSignInCodes).where(lt(oidcSignInCodes.expiresAt, new Date()));
    await db.insert(oidcSignInCodes).values({
      codeHash: sha256Hex(code),
      userId,
      codeChallenge,
      expiresAt: new Date(Date.now() + SIGN_IN_CODE_TTL_SECONDS * 1000),
    });
    return code;
  }

  /** Deletes the code (single use, even when the verifier is wrong) and returns its user. */
  private async consumeSignInCode(code: string, codeVerifier?: string): Promise<string> {
    const [row] = await this.deps.db
      .delete(oidcSignInCodes)
      .where(eq(oidcSignInCodes.codeHash, sha256Hex(code)))
      .returning();
    if (!row || row.expiresAt.getTime() <= Date.now()) {
      throw new DomainError("unauthorized", "the sign-in code is unknown, spent or expired");
    }
    if (row.codeChallenge !== null) {
      if (!codeVerifier || !CODE_VERIFIER.test(codeVerifier)) {
        throw new DomainError("unauthorized", "codeVerifier is required for this sign-in code");
      }
      const expected = Buffer.from(row.codeChallenge);
      const actual = Buffer.from(s256(codeVerifier));
      if (expected.length !== actual.length || !timingSafeEqual(expected, actual)) {
        throw new DomainError("unauthorized", "codeVerifier does not match the sign-in's code_challenge");
      }
    }
    return row.userId;
  }

  /**
   * Revokes every device's tokens in one transaction, `first` run first in it and the `audit` entry
   * written last (`SessionService.revokeAccount`), which then closes their sockets wherever they are
   * (4401). Returns how many devices.
   */
  private async revokeEverywhere(
    userId: string,
    first: ((tx: Tx) => Promise<void>) | undefined,
    audit: (revoked: number[]) => AuditEvent,
  ): Promise<number> {
    const devices = await this.deps.sessions.revokeAccount(userId, { first, audit });
    this.deps.logger.info({ devices: devices.length }, "oidc logout revoked every device of a user");
    return devices.length;
  }
}
