import { treaty } from "@elysiajs/eden";
import type { App } from "../http/app.ts";
import { MAX_DEVICE_ID } from "../protocol/ids.ts";

/**
 * The typed HTTP API of a ClearBox node: Elysia's Eden treaty over the server's exported app type,
 * so request and reply shapes come from the routes' own schemas instead of copies kept by hand.
 */
type Api = ReturnType<typeof treaty<App>>;

/** What a successful call of an Eden method resolves to. */
type DataOf<Call extends (...args: never[]) => Promise<{ data: unknown }>> = NonNullable<
  Awaited<ReturnType<Call>>["data"]
>;

/** The tokens of a login or refresh (`POST /v1/sessions`). */
export type SessionTokens = DataOf<Api["v1"]["sessions"]["post"]>;
/** A key upload (`PUT /v1/keys`). */
export type KeyUpload = Parameters<Api["v1"]["keys"]["put"]>[0];
/** A signed prekey as uploaded and served (EC signed prekey or Kyber key). */
export type SignedKeyJson = KeyUpload["signedPreKey"];
/** Every device's prekey bundle of one user (`GET /v1/keys/:userId`). */
export type UserBundle = DataOf<ReturnType<Api["v1"]["keys"]>["get"]>;
export type DeviceBundle = UserBundle["devices"][number];
/** One device of the account (`GET /v1/devices`). */
export type DeviceInfo = DataOf<Api["v1"]["devices"]["get"]>["devices"][number];
/** A user found by exact username or by id (`GET /v1/users`). */
export type UserInfo = DataOf<Api["v1"]["users"]["get"]>;
/** A group as a member sees it (`GET /v1/groups/:groupId`). */
export type GroupInfo = DataOf<ReturnType<Api["v1"]["groups"]>["get"]>;
/** A pending invitation to a group (`GET /v1/invitations`); `invitedAt` in Unix ms. */
export type Invitation = DataOf<Api["v1"]["invitations"]["get"]>["invitations"][number];
/** One user this account blocks (`GET /v1/blocks`); `blockedAt` in Unix ms. */
export type BlockEntry = DataOf<Api["v1"]["blocks"]["get"]>["blocks"][number];
/** The key erasure receipts are signed with (`GET /v1/erasures/signing-key`): SPKI DER in base64. */
export type ErasureSigningKey = DataOf<Api["v1"]["erasures"]["signing-key"]["get"]>;

/** What to tell the user in a device sign-in (`POST /v1/oidc/device`, RFC 8628 §3.2). */
export type DeviceSignInPrompt = DataOf<Api["v1"]["oidc"]["device"]["post"]>;

/** A refusal from the server: its HTTP status and protocol error code. */
export class ClearBoxApiError extends Error {
  override name = "ClearBoxApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** A password change (`POST /v1/me/password`): `logoutDevices` defaults to true. */
export interface PasswordChange {
  currentPassword: string;
  newPassword: string;
  logoutDevices?: boolean;
}

/** Where the client keeps its tokens; the SDK persists them in the account store. */
export interface TokenHolder {
  tokens(): SessionTokens | undefined;
  setTokens(tokens: SessionTokens): void;
}

/** Keeps tokens in memory only: for a client that makes unauthenticated calls, or need not survive a restart. */
function tokensInMemory(): TokenHolder {
  let held: SessionTokens | undefined;
  return {
    tokens: () => held,
    setTokens: (tokens) => {
      held = tokens;
    },
  };
}

/**
 * Refresh the access token this long before it expires: 30 s, or half its lifetime when that is
 * shorter (a server with a short `ACCESS_TOKEN_TTL_SECONDS`), so a socket's `auth` frame reaches the
 * server before the token it carries expires.
 */
function refreshMarginMs(expiresInSeconds: number): number {
  return Math.min(30_000, (expiresInSeconds * 1000) / 2);
}

/** A UUID in either case: the form of every user, group and erasure id (src/protocol/ids.ts). */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * `value` when it is a UUID (either case), for a URL path segment. Eden puts path parameters into
 * the URL as they are, so an id a caller or a hostile server chose, such as `../../admin` or
 * `x?y`, would address another resource: anything else throws a RangeError naming `field` (not
 * the value) before any request is made.
 */
function uuidSegment(field: string, value: unknown): string {
  if (typeof value !== "string" || !UUID.test(value)) throw new RangeError(`${field} must be a UUID`);
  return value;
}

/** `value` when it is a device id (an integer 1-127), else a RangeError before any request is made. */
function deviceIdSegment(value: unknown): number {
  if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > MAX_DEVICE_ID) {
    throw new RangeError(`deviceId must be an integer from 1 to ${MAX_DEVICE_ID}`);
  }
  return value as number;
}

/** What every Eden call resolves to, reduced to what `unwrap` reads. */
interface EdenReply<T> {
  data: T | null;
  error: { status: unknown; value: unknown } | null;
  response: Response;
}

/**
 * The reply's data, or the server's refusal as a `ClearBoxApiError`. A request that never reached
 * the server throws a `TypeError` naming `baseUrl` and the network's reason (e.g. "cannot reach the
 * server at http://127.0.0.1:8080: ECONNREFUSED: Unable to connect…"), so the user sees which
 * address was tried.
 */
async function unwrap<T>(call: Promise<EdenReply<T>>, baseUrl: string): Promise<NonNullable<T>> {
  const { data, error, response } = await call;
  // Eden answers a request that never reached the server (refused, reset) without a response.
  if (error && !response) {
    const reason =
      error.value instanceof Error ? error.value.message : String(error.value ?? "network error");
    throw new TypeError(`cannot reach the server at ${baseUrl}: ${reason}`);
  }
  if (error) {
    const body = (error.value as { error?: { code?: string; message?: string } } | null)?.error;
    const retryAfter = response.headers.get("retry-after");
    throw new ClearBoxApiError(
      response.status,
      body?.code ?? "unknown",
      body?.message ?? `HTTP ${response.status}`,
      retryAfter ? Number(retryAfter) : undefined,
    );
  }
  return data as NonNullable<T>;
}

/**
 * Typed client of the ClearBox HTTP API. Bearer calls refresh the access token shortly before it
 * expires, and once more on a 401, persisting each rotated refresh token through `holder`
 * (by default held in memory only: enough for calls that need no login).
 */
export class ClearBoxHttp {
  /** When the access token is to be refreshed (Unix ms, local clock); 0: at the next use. */
  private refreshAt = 0;
  private readonly api: Api;

  constructor(
    readonly baseUrl: string,
    private readonly holder: TokenHolder = tokensInMemory(),
    /** PEM CA certificates to trust for an https server instead of the system's (a private CA). */
    ca?: string,
  ) {
    this.api = treaty<App>(baseUrl, {
      // Bun's fetch takes the CA to trust as `tls.ca`.
      fetcher: ca ? (((url, init) => fetch(url, { ...init, tls: { ca } })) as typeof fetch) : undefined,
      parseDate: false,
    });
  }

  async register(username: string, password: string): Promise<{ userId: string }> {
    return unwrap(this.api.v1.accounts.post({ username, password }), this.baseUrl);
  }

  /** Logs in; without `deviceId` a new device is created for `registrationId`. Stores the tokens. */
  async login(input: {
    username: string;
    password: string;
    deviceId?: number;
    registrationId?: number;
    deviceName?: string;
  }): Promise<SessionTokens> {
    const tokens = await unwrap(this.api.v1.sessions.post(input), this.baseUrl);
    this.adopt(tokens);
    return tokens;
  }

  /** Starts a native sign-in at the identity provider (device authorization grant). */
  async oidcDeviceStart(): Promise<DeviceSignInPrompt> {
    return unwrap(this.api.v1.oidc.device.post({}), this.baseUrl);
  }

  /** Polls a device sign-in once: pending (wait `interval` s) or done with a one-time sign-in code. */
  async oidcDevicePoll(deviceCode: string, interval: number) {
    return unwrap(this.api.v1.oidc.device.poll.post({ deviceCode, interval }), this.baseUrl);
  }

  /** Exchanges a one-time sign-in code for a session (a device reused or created). Stores the tokens. */
  async oidcSession(input: {
    code: string;
    codeVerifier?: string;
    userId?: string;
    deviceId?: number;
    registrationId?: number;
    deviceName?: string;
  }): Promise<SessionTokens> {
    const tokens = await unwrap(this.api.v1.oidc.sessions.post(input), this.baseUrl);
    this.adopt(tokens);
    return tokens;
  }

  /**
   * Spends the stored refresh token for a new pair. Concurrent callers share one request: a refresh
   * token is single-use, and the server takes a second use of one as theft (every token of the
   * device revoked, docs/PROTOCOL.md). A password change in flight (`changePassword`) is waited for
   * first, and a pair answered after a password change re-keyed the device is not stored (the
   * change revoked it): the change's tokens are returned instead.
   */
  refresh(): Promise<SessionTokens> {
    this.refreshing ??= (async () => {
      try {
        await this.rekeying?.catch(() => undefined);
        const current = this.holder.tokens();
        if (!current) throw new ClearBoxApiError(401, "unauthorized", "not logged in");
        const rekeys = this.rekeys;
        const tokens = await unwrap(
          this.api.v1.sessions.refresh.post({ refreshToken: current.refreshToken }),
          this.baseUrl,
        );
        if (rekeys !== this.rekeys) return this.holder.tokens() ?? tokens;
        this.adopt(tokens);
        return tokens;
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /** A password change under way (`changePassword`): refreshes wait for it. */
  private rekeying: Promise<unknown> | undefined;
  /** Password changes answered so far: a refresh answered after one does not store its pair. */
  private rekeys = 0;

  /**
   * Changes the account's password (`POST /v1/me/password`). The server re-keys this device: every
   * token it held before is refused from then on and its sockets are closed (4401); the new session
   * the server answers with (the shape of a login's) is stored and returned, so later calls go on
   * with it (a `Messenger` reconnects its socket, see `Messenger.changePassword`). With
   * `logoutDevices` (default true) the account's other devices are signed out too.
   * Not retried after a 401 (a wrong `currentPassword` is a 401, and each try spends the account's
   * password-check budget): ClearBoxApiError 401 `unauthorized` for a wrong password or a revoked
   * session, 403 `forbidden` for an account without a password, 429 `rate_limited`, 400 `invalid`
   * for a new password outside 8–256 characters. Should the answer be lost (the network dropped it
   * after the server changed the password), this device's tokens are revoked and it must log in again.
   */
  changePassword(input: PasswordChange): Promise<SessionTokens> {
    // One change at a time: each one's token is the one the change before it answered with.
    const run = this.changes.then(() => this.changePasswordNow(input));
    this.changes = run.catch(() => undefined);
    return run;
  }

  private changes: Promise<unknown> = Promise.resolve();

  private async changePasswordNow(input: PasswordChange): Promise<SessionTokens> {
    // A refresh in flight answers first, and the token sent is a current one (refreshed if due);
    // refreshes started from here on wait for the change (`rekeying`, set with no await between).
    await this.refreshing?.catch(() => undefined);
    const accessToken = await this.accessToken();
    const change = unwrap(
      this.api.v1.me.password.post(input, { headers: { authorization: `Bearer ${accessToken}` } }),
      this.baseUrl,
    ).then((tokens) => {
      this.rekeys++;
      this.adopt(tokens);
      return tokens;
    });
    this.rekeying = change;
    try {
      return await change;
    } finally {
      if (this.rekeying === change) this.rekeying = undefined;
    }
  }

  /**
   * When the access token is due for renewal (Unix ms, local clock): `accessToken()` refreshes from
   * then on. A socket renews in-band at this time (`SocketReauthentication`). 0 before any login.
   */
  get renewAt(): number {
    return this.refreshAt;
  }

  private refreshing: Promise<SessionTokens> | undefined;

  /** A valid access token, refreshed first when it is about to expire (e.g. after a restart). */
  async accessToken(): Promise<string> {
    const current = this.holder.tokens();
    if (!current) throw new ClearBoxApiError(401, "unauthorized", "not logged in");
    if (Date.now() >= this.refreshAt) return (await this.refresh()).accessToken;
    return current.accessToken;
  }

  async devices(): Promise<DeviceInfo[]> {
    return (await this.authed((headers) => this.api.v1.devices.get({ headers }))).devices;
  }

  async removeDevice(deviceId: number): Promise<void> {
    const id = deviceIdSegment(deviceId);
    await this.authed((headers) => this.api.v1.devices({ deviceId: id }).delete(undefined, { headers }));
  }

  async uploadKeys(upload: KeyUpload): Promise<void> {
    await this.authed((headers) => this.api.v1.keys.put(upload, { headers }));
  }

  async keyCount(): Promise<{ preKeys: number; kyberPreKeys: number }> {
    return this.authed((headers) => this.api.v1.keys.count.get({ headers }));
  }

  /** One prekey bundle per device of `userId`; consumes one-time keys on the server. */
  async fetchBundle(userId: string): Promise<UserBundle> {
    const id = uuidSegment("userId", userId);
    return this.authed((headers) => this.api.v1.keys({ userId: id }).get({ headers }));
  }

  /**
   * The user named exactly `username` (`GET /v1/users?username=`): `{userId, username}`;
   * ClearBoxApiError 404 `not_found` when none, 429 `rate_limited` past the device's lookup budget.
   */
  async lookupUser(username: string): Promise<UserInfo> {
    return this.authed((headers) => this.api.v1.users.get({ query: { username }, headers }));
  }

  /** The username of `userId` (`GET /v1/users/:userId`); 404 `not_found` when no such account. */
  async user(userId: string): Promise<UserInfo> {
    const id = uuidSegment("userId", userId);
    return this.authed((headers) => this.api.v1.users({ userId: id }).get({ headers }));
  }

  /**
   * Creates a group with this account as its admin and only member; each of `members` is invited
   * and becomes a member once they accept (`acceptInvitation`). Throws ClearBoxApiError `not_found`
   * when one of them does not exist.
   */
  async createGroup(input: { name: string; members: string[] }): Promise<{ groupId: string }> {
    return this.authed((headers) => this.api.v1.groups.post(input, { headers }));
  }

  async group(groupId: string): Promise<GroupInfo> {
    const id = uuidSegment("groupId", groupId);
    return this.authed((headers) => this.api.v1.groups({ groupId: id }).get({ headers }));
  }

  /**
   * Invites `userId` to the group (admins only): they become a member once they accept. Inviting a
   * member, someone already invited, or someone who blocks this account succeeds and changes nothing.
   */
  async addGroupMember(groupId: string, userId: string): Promise<void> {
    const id = uuidSegment("groupId", groupId);
    await this.authed((headers) => this.api.v1.groups({ groupId: id }).members.post({ userId }, { headers }));
  }

  /** Removes a member or withdraws an invitation (admins; anyone for themselves: leaving). */
  async removeGroupMember(groupId: string, userId: string): Promise<void> {
    const group = uuidSegment("groupId", groupId);
    const user = uuidSegment("userId", userId);
    await this.authed((headers) =>
      this.api.v1.groups({ groupId: group }).members({ userId: user }).delete(undefined, { headers }),
    );
  }

  /** This account's pending group invitations, oldest first. */
  async invitations(): Promise<Invitation[]> {
    return (await this.authed((headers) => this.api.v1.invitations.get({ headers }))).invitations;
  }

  /** Accepts an invitation: this account becomes a member. ClearBoxApiError `not_found` without one. */
  async acceptInvitation(groupId: string): Promise<void> {
    const id = uuidSegment("groupId", groupId);
    await this.authed((headers) =>
      this.api.v1.invitations({ groupId: id }).accept.post(undefined, { headers }),
    );
  }

  /** Declines an invitation (it is deleted). ClearBoxApiError `not_found` without one. */
  async declineInvitation(groupId: string): Promise<void> {
    const id = uuidSegment("groupId", groupId);
    await this.authed((headers) =>
      this.api.v1.invitations({ groupId: id }).decline.post(undefined, { headers }),
    );
  }

  /**
   * Blocks a user: they can no longer message this account (their sends are dropped, and they are
   * not told), invite it to groups, or see its presence. Idempotent.
   */
  async block(userId: string): Promise<void> {
    const id = uuidSegment("userId", userId);
    await this.authed((headers) => this.api.v1.blocks({ userId: id }).post(undefined, { headers }));
  }

  /** Lifts a block. Idempotent. */
  async unblock(userId: string): Promise<void> {
    const id = uuidSegment("userId", userId);
    await this.authed((headers) => this.api.v1.blocks({ userId: id }).delete(undefined, { headers }));
  }

  /** The users this account blocks, oldest block first. */
  async blocks(): Promise<BlockEntry[]> {
    return (await this.authed((headers) => this.api.v1.blocks.get({ headers }))).blocks;
  }

  /** This account's data as the server holds it (`GET /v1/me/export`, GDPR Art. 15 and 20). */
  async exportMe(): Promise<unknown> {
    return this.authed((headers) => this.api.v1.me.export.get({ headers }));
  }

  /**
   * Starts the erasure of this account (`DELETE /v1/me`), proven by the password again; returns the
   * erasure id whose status and signed receipt `erasure` reads (no login needed: the account goes).
   */
  async eraseMe(password: string): Promise<{ erasureId: string }> {
    return this.authed((headers) => this.api.v1.me.delete({ password }, { headers }));
  }

  /** An erasure's status, with the signed receipt once it is done (`GET /v1/erasures/:erasureId`). */
  async erasure(erasureId: string) {
    const id = uuidSegment("erasureId", erasureId);
    return unwrap(this.api.v1.erasures({ erasureId: id }).get(), this.baseUrl);
  }

  /**
   * The key this server signs erasure receipts with (`GET /v1/erasures/signing-key`, no login).
   * Throws ClearBoxApiError on an HTTP error, TypeError when the server cannot be reached.
   */
  async erasureSigningKey(): Promise<ErasureSigningKey> {
    return unwrap(this.api.v1.erasures["signing-key"].get(), this.baseUrl);
  }

  private adopt(tokens: SessionTokens): void {
    this.refreshAt = Date.now() + tokens.expiresIn * 1000 - refreshMarginMs(tokens.expiresIn);
    this.holder.setTokens(tokens);
  }

  /** Runs a bearer call; on a 401 (revoked token, skewed clock) refreshes once and retries. */
  private async authed<T>(call: (headers: { authorization: string }) => Promise<EdenReply<T>>) {
    const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
    try {
      return await unwrap(call(bearer(await this.accessToken())), this.baseUrl);
    } catch (error) {
      if (!(error instanceof ClearBoxApiError) || error.status !== 401) throw error;
      const { accessToken } = await this.refresh();
      return unwrap(call(bearer(accessToken)), this.baseUrl);
    }
  }
}
