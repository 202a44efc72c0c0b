import { createRemoteJWKSet, importPKCS8, type JWTPayload, jwtVerify } from "jose";
import * as client from "openid-client";
import type { OidcConfig } from "../config/oidc.ts";
import { isLoopbackUrl } from "../config/oidc.ts";
import { DomainError } from "../errors/index.ts";
import type { Logger } from "../observability/logger.ts";

/** An end-user the provider vouched for in a verified ID token. */
export interface VerifiedIdentity {
  /** `iss`: the provider's issuer identifier. */
  issuer: string;
  /** `sub`: the provider's stable, never-reassigned identifier of the user (OIDC Core §5.7). */
  subject: string;
  /** Every claim of the ID token (the username claim is read from here); never logged. */
  claims: Record<string, unknown>;
}

/** What the end-user is told to do in a device authorization grant (RFC 8628 §3.2). */
export interface DeviceAuthorization {
  deviceCode: string;
  userCode: string;
  verificationUri: string;
  verificationUriComplete?: string;
  /** Seconds until the device code expires. */
  expiresIn: number;
  /** Seconds to wait between polls. */
  interval: number;
}

/** One poll of a device authorization grant. */
export type DevicePoll =
  | { status: "pending"; interval: number }
  | { status: "slow_down"; interval: number }
  | { status: "done"; identity: VerifiedIdentity };

/** A verified back-channel logout token (OIDC Back-Channel Logout 1.0 §2.4). */
export interface LogoutToken {
  issuer: string;
  subject?: string;
  sid?: string;
  jti: string;
  /** Until when the token's `jti` must be remembered: after it the token is too old anyway. */
  replayUntil: Date;
}

/** The event a logout token must carry (Back-Channel Logout 1.0 §2.4). */
export const BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout";
/** How old a logout token may be (its `iat`), and so how long its `jti` is remembered. */
export const LOGOUT_TOKEN_MAX_AGE_SECONDS = 300;
/** Clock skew tolerated between ClearBox and the provider, seconds. */
const CLOCK_TOLERANCE_SECONDS = 30;
const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
/**
 * The range of a device sign-in's poll interval, seconds, that ClearBox hands to clients and takes
 * back from them (`POST /v1/oidc/device/poll`). RFC 8628 §3.5 has a `slow_down` add 5 s for every
 * later poll without a ceiling; past the ceiling the client's next poll would be refused, so the
 * interval stays at it. A poll every 10 minutes still finishes within any device code's lifetime
 * worth waiting for.
 */
export const POLL_INTERVAL_SECONDS = { min: 1, max: 600 } as const;

/** `seconds` (an integer the provider sent, or one it made larger) within POLL_INTERVAL_SECONDS. */
export function pollInterval(seconds: number): number {
  return Math.min(POLL_INTERVAL_SECONDS.max, Math.max(POLL_INTERVAL_SECONDS.min, Math.trunc(seconds)));
}
/** jose's codes for a key set that could not be fetched (as opposed to a token that does not verify). */
const KEY_FETCH_FAILURES = new Set(["ERR_JWKS_TIMEOUT", "ERR_JOSE_GENERIC", "ERR_JWKS_INVALID"]);
/** Asymmetric JWS algorithms only: a logout token signed with `none` or an HMAC of the client secret is refused. */
const ASYMMETRIC_ALG = /^(RS|PS|ES)(256|384|512)$|^EdDSA$|^Ed25519$/;

/**
 * Turns a failure of openid-client (or of the network) into a refusal the edge maps: a response
 * that does not verify is `unauthorized` (401); a provider that does not answer properly is
 * `unavailable` (503). Only the library's error code is logged, never its cause (which may hold
 * claims, codes or tokens).
 */
function refusal(error: unknown, logger: Logger, step: string): DomainError {
  if (error instanceof DomainError) return error;
  const code = (error as { code?: unknown }).code;
  const oauthError = error instanceof client.ResponseBodyError ? error.error : undefined;
  const verdict =
    error instanceof client.ResponseBodyError ||
    error instanceof client.AuthorizationResponseError ||
    (error instanceof client.ClientError &&
      code !== "OAUTH_RESPONSE_IS_NOT_CONFORM" &&
      code !== "OAUTH_RESPONSE_IS_NOT_JSON")
      ? "refused"
      : "unavailable";
  logger.info(
    {
      step,
      verdict,
      errorName: (error as Error)?.name,
      errorCode: typeof code === "string" ? code : undefined,
      // OAuth error codes are a fixed vocabulary (RFC 6749 §5.2), not user data.
      oauthError:
        typeof oauthError === "string" && /^[a-z_]{1,64}$/.test(oauthError) ? oauthError : undefined,
    },
    "oidc step failed",
  );
  return verdict === "refused"
    ? new DomainError("unauthorized", "the identity provider's answer did not verify; sign in again")
    : new DomainError("unavailable", "the identity provider did not answer properly; try again later");
}

/**
 * ClearBox as an OpenID Connect relying party, on `openid-client` (certified): discovery (fetched
 * on first use and kept; a failed discovery is retried by the next request), the authorization
 * code flow with PKCE, state and nonce, the device authorization grant (RFC 8628), and validation
 * of back-channel logout tokens (with `jose`, which openid-client is built on).
 *
 * Signing keys: ID tokens are checked against the issuer's JWKS (`enableNonRepudiationChecks`:
 * openid-client would otherwise trust the TLS channel, OIDC Core §3.1.3.7), which openid-client
 * caches for up to 5 minutes and refetches when a token names a key it does not hold and the
 * cache is at least 60 s old; logout tokens use jose's remote key set (refetch on an unknown key
 * after a 30 s cooldown, cache at most 10 minutes). A provider that rotates its keys is therefore
 * followed within a minute, without a restart.
 */
export class RelyingParty {
  private discovered: Promise<client.Configuration> | undefined;
  private logoutKeys: ReturnType<typeof createRemoteJWKSet> | undefined;

  constructor(
    readonly config: OidcConfig,
    private readonly logger: Logger,
  ) {}

  /** The discovered configuration; one discovery at a time, retried after a failure. */
  private configuration(): Promise<client.Configuration> {
    this.discovered ??= this.discover().catch((error) => {
      this.discovered = undefined;
      throw refusal(error, this.logger, "discovery");
    });
    return this.discovered;
  }

  private async discover(): Promise<client.Configuration> {
    const { issuer, clientId, clientAuth } = this.config;
    const auth =
      clientAuth.method === "client_secret_basic"
        ? client.ClientSecretBasic(clientAuth.secret)
        : client.PrivateKeyJwt({
            key: await importPKCS8(clientAuth.keyPem, clientAuth.alg),
            kid: clientAuth.keyId,
          });
    const execute = isLoopbackUrl(new URL(issuer)) ? [client.allowInsecureRequests] : [];
    const configuration = await client.discovery(new URL(issuer), clientId, undefined, auth, {
      execute,
      timeout: 10,
    });
    client.enableNonRepudiationChecks(configuration);
    const jwksUri = configuration.serverMetadata().jwks_uri;
    if (!jwksUri) throw new DomainError("unavailable", "the identity provider publishes no jwks_uri");
    this.logoutKeys = createRemoteJWKSet(new URL(jwksUri), { timeoutDuration: 10_000 });
    return configuration;
  }

  /**
   * The provider's authorization URL for a new browser sign-in, and the secrets to check its
   * answer with: `state` (CSRF, RFC 6749 §10.12), `nonce` (ID token replay, OIDC Core §3.1.2.1)
   * and the PKCE verifier (RFC 7636, S256).
   */
  async authorizationRequest(
    options: { prompt?: "login" } = {},
  ): Promise<{ url: URL; state: string; nonce: string; codeVerifier: string }> {
    const configuration = await this.configuration();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const codeVerifier = client.randomPKCECodeVerifier();
    const parameters: Record<string, string> = {
      redirect_uri: this.config.redirectUri,
      scope: this.config.scopes.join(" "),
      response_type: "code",
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: "S256",
      state,
      nonce,
    };
    if (options.prompt) parameters.prompt = options.prompt;
    return { url: client.buildAuthorizationUrl(configuration, parameters), state, nonce, codeVerifier };
  }

  /**
   * Checks the authorization response (`state`, `iss` when sent, RFC 9207), redeems the code at the
   * token endpoint with the PKCE verifier, and verifies the ID token: signature against the
   * issuer's keys, `iss`, `aud`, `exp`, `iat` and `nonce`. `unauthorized` when anything is off.
   */
  async completeAuthorization(
    callbackParameters: URLSearchParams,
    checks: { state: string; nonce: string; codeVerifier: string },
  ): Promise<VerifiedIdentity> {
    const configuration = await this.configuration();
    // The redirect URI the provider knows, not the URL this node saw (a proxy may stand between).
    const callback = new URL(this.config.redirectUri);
    callback.search = callbackParameters.toString();
    try {
      const tokens = await client.authorizationCodeGrant(configuration, callback, {
        expectedState: checks.state,
        expectedNonce: checks.nonce,
        pkceCodeVerifier: checks.codeVerifier,
        idTokenExpected: true,
      });
      return this.identityOf(tokens.claims());
    } catch (error) {
      throw refusal(error, this.logger, "authorization_code");
    }
  }

  /** Starts a device authorization grant (RFC 8628 §3.1) with the configured scopes. */
  async startDeviceAuthorization(): Promise<DeviceAuthorization> {
    const configuration = await this.configuration();
    if (!configuration.serverMetadata().device_authorization_endpoint) {
      throw new DomainError(
        "not_found",
        "the identity provider does not offer the device authorization grant",
      );
    }
    try {
      const response = await client.initiateDeviceAuthorization(configuration, {
        scope: this.config.scopes.join(" "),
      });
      return {
        deviceCode: response.device_code,
        userCode: response.user_code,
        verificationUri: response.verification_uri,
        verificationUriComplete: response.verification_uri_complete,
        expiresIn: response.expires_in,
        interval: pollInterval(response.interval ?? 5),
      };
    } catch (error) {
      throw refusal(error, this.logger, "device_authorization");
    }
  }

  /**
   * One token request of the device authorization grant (RFC 8628 §3.4-3.5): still pending, slow
   * down (`interval` + 5 s, at most POLL_INTERVAL_SECONDS.max), or done with a verified ID token
   * (signature, iss, aud, exp, iat). A denied or expired grant is `unauthorized`.
   */
  async pollDeviceAuthorization(deviceCode: string, interval: number): Promise<DevicePoll> {
    const configuration = await this.configuration();
    try {
      const tokens = await client.genericGrantRequest(configuration, DEVICE_CODE_GRANT, {
        device_code: deviceCode,
      });
      return { status: "done", identity: this.identityOf(tokens.claims()) };
    } catch (error) {
      if (error instanceof client.ResponseBodyError) {
        if (error.error === "authorization_pending") return { status: "pending", interval };
        if (error.error === "slow_down") return { status: "slow_down", interval: pollInterval(interval + 5) };
      }
      throw refusal(error, this.logger, "device_code");
    }
  }

  private identityOf(claims: client.IDToken | undefined): VerifiedIdentity {
    if (!claims) throw new DomainError("unauthorized", "the identity provider sent no ID token");
    return { issuer: claims.iss, subject: claims.sub, claims: { ...claims } };
  }

  /**
   * Validates a back-channel logout token as OIDC Back-Channel Logout 1.0 §2.6 asks: a JWS with an
   * asymmetric algorithm whose signature verifies against the issuer's keys; `iss` the issuer,
   * `aud` our client id, `iat` present and at most 5 minutes old, `exp` (when present) not passed;
   * `jti` present; `events` holding the back-channel logout event as an object; `sub` or `sid`;
   * and no `nonce` (so an ID token can never pass for a logout token). Replay of `jti` is the
   * caller's check. `invalid` (400) when anything is off, as §2.8 asks.
   */
  async verifyLogoutToken(token: string): Promise<LogoutToken> {
    const configuration = await this.configuration();
    const metadata = configuration.serverMetadata();
    const keys = this.logoutKeys;
    if (!keys) throw new DomainError("unavailable", "the identity provider's keys are not known yet");
    const algorithms = (metadata.id_token_signing_alg_values_supported ?? ["RS256"]).filter((alg) =>
      ASYMMETRIC_ALG.test(alg),
    );
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, keys, {
        issuer: metadata.issuer,
        audience: this.config.clientId,
        algorithms,
        requiredClaims: ["iat", "jti", "events"],
        maxTokenAge: LOGOUT_TOKEN_MAX_AGE_SECONDS,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
      }));
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      this.logger.info(
        { step: "logout_token", errorCode: typeof code === "string" ? code : (error as Error)?.name },
        "oidc step failed",
      );
      // Our failure to fetch the keys is not the token's fault: 503 lets the provider retry (§2.8).
      if (typeof code !== "string" || !code.startsWith("ERR_J") || KEY_FETCH_FAILURES.has(code)) {
        throw new DomainError("unavailable", "the identity provider's keys could not be fetched; try again");
      }
      throw new DomainError("invalid", "logout_token did not verify");
    }
    const events = payload.events as Record<string, unknown> | undefined;
    const event = events?.[BACKCHANNEL_LOGOUT_EVENT];
    if (typeof events !== "object" || typeof event !== "object" || event === null || Array.isArray(event)) {
      throw new DomainError("invalid", "logout_token carries no back-channel logout event");
    }
    if ("nonce" in payload) throw new DomainError("invalid", "logout_token must not carry a nonce");
    const subject = typeof payload.sub === "string" ? payload.sub : undefined;
    const sid = typeof payload.sid === "string" ? (payload.sid as string) : undefined;
    if (!subject && !sid) throw new DomainError("invalid", "logout_token names neither sub nor sid");
    if (typeof payload.jti !== "string" || payload.jti.length > 255) {
      throw new DomainError("invalid", "logout_token has no usable jti");
    }
    const iat = payload.iat as number;
    return {
      issuer: payload.iss as string,
      subject,
      sid,
      jti: payload.jti,
      replayUntil: new Date((iat + LOGOUT_TOKEN_MAX_AGE_SECONDS + CLOCK_TOLERANCE_SECONDS) * 1000),
    };
  }
}
