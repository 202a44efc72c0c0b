/** Wire types of the HTTP API (protocol.md), as the client sees them. */
export interface SessionTokens {
  userId: string;
  deviceId: number;
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
}

export interface SignedKeyJson {
  keyId: number;
  publicKey: string;
  signature: string;
}

export interface KeyUpload {
  identityKey: string;
  signedPreKey: SignedKeyJson;
  kyberPreKey: SignedKeyJson;
  preKeys?: { keyId: number; publicKey: string }[];
  kyberPreKeys?: SignedKeyJson[];
}

export interface DeviceBundle {
  deviceId: number;
  registrationId: number;
  identityKey: string;
  signedPreKey: SignedKeyJson;
  kyberPreKey: SignedKeyJson;
  preKey: { keyId: number; publicKey: string } | null;
}

export interface UserBundle {
  userId: string;
  devices: DeviceBundle[];
}

export interface DeviceInfo {
  deviceId: number;
  name: string | null;
  createdAt: number;
  lastSeen: number;
}

export interface GroupInfo {
  groupId: string;
  name: string;
  members: string[];
  admins: string[];
}

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

/** Where the client keeps its tokens; the SDK persists them in the account store. */
export interface TokenHolder {
  tokens(): SessionTokens | undefined;
  setTokens(tokens: SessionTokens): void;
}

/** Refresh the access token this long before it expires. */
const REFRESH_MARGIN_MS = 30_000;

/**
 * Typed client of the ClearBox HTTP API. Bearer calls refresh the access token shortly before it
 * expires, and once more on a 401, persisting each rotated refresh token through `holder`.
 */
export class ClearBoxHttp {
  private accessExpiresAt = 0;

  constructor(
    readonly baseUrl: string,
    private readonly holder: TokenHolder,
    /** PEM CA certificates to trust for an https server instead of the system's (a private CA). */
    private readonly ca?: string,
  ) {}

  async register(username: string, password: string): Promise<{ userId: string }> {
    return this.request("POST", "/v1/accounts", { body: { username, password } });
  }

  /** Logs in; without `deviceId` a new device is created for `registrationId`. Stores the tokens. */
  async login(input: {
    username: string;
    password: string;
    deviceId?: number;
    registrationId?: number;
    deviceName?: string;
  }): Promise<SessionTokens> {
    const tokens = await this.request<SessionTokens>("POST", "/v1/sessions", { body: input });
    this.adopt(tokens);
    return tokens;
  }

  /** Spends the stored refresh token for a new pair. */
  async refresh(): Promise<SessionTokens> {
    const current = this.holder.tokens();
    if (!current) throw new ClearBoxApiError(401, "unauthorized", "not logged in");
    const tokens = await this.request<SessionTokens>("POST", "/v1/sessions/refresh", {
      body: { refreshToken: current.refreshToken },
    });
    this.adopt(tokens);
    return tokens;
  }

  /** A valid access token, refreshed first when it is about to expire (e.g. after a restart). */
  async accessToken(): Promise<string> {
    const current = this.holder.tokens();
    if (!current) throw new ClearBoxApiError(401, "unauthorized", "not logged in");
    if (Date.now() + REFRESH_MARGIN_MS >= this.accessExpiresAt) return (await this.refresh()).accessToken;
    return current.accessToken;
  }

  async devices(): Promise<DeviceInfo[]> {
    return (await this.authed<{ devices: DeviceInfo[] }>("GET", "/v1/devices")).devices;
  }

  async removeDevice(deviceId: number): Promise<void> {
    await this.authed("DELETE", `/v1/devices/${deviceId}`);
  }

  async uploadKeys(upload: KeyUpload): Promise<void> {
    await this.authed("PUT", "/v1/keys", upload);
  }

  async keyCount(): Promise<{ preKeys: number; kyberPreKeys: number }> {
    return this.authed("GET", "/v1/keys/count");
  }

  /** One prekey bundle per device of `userId`; consumes one-time keys on the server. */
  async fetchBundle(userId: string): Promise<UserBundle> {
    return this.authed("GET", `/v1/keys/${encodeURIComponent(userId)}`);
  }

  /** Creates a group with this account as its admin. */
  async createGroup(input: { name: string; members: string[] }): Promise<{ groupId: string }> {
    return this.authed("POST", "/v1/groups", input);
  }

  async group(groupId: string): Promise<GroupInfo> {
    return this.authed("GET", `/v1/groups/${encodeURIComponent(groupId)}`);
  }

  async addGroupMember(groupId: string, userId: string): Promise<void> {
    await this.authed("POST", `/v1/groups/${encodeURIComponent(groupId)}/members`, { userId });
  }

  async removeGroupMember(groupId: string, userId: string): Promise<void> {
    await this.authed(
      "DELETE",
      `/v1/groups/${encodeURIComponent(groupId)}/members/${encodeURIComponent(userId)}`,
    );
  }

  private adopt(tokens: SessionTokens): void {
    this.accessExpiresAt = Date.now() + tokens.expiresIn * 1000;
    this.holder.setTokens(tokens);
  }

  private async authed<T>(method: string, path: string, body?: unknown): Promise<T> {
    try {
      return await this.request<T>(method, path, { body, token: await this.accessToken() });
    } catch (error) {
      if (!(error instanceof ClearBoxApiError) || error.status !== 401) throw error;
      // The token may have been revoked or the clock skewed: one refresh, one retry.
      const { accessToken } = await this.refresh();
      return this.request<T>(method, path, { body, token: accessToken });
    }
  }

  private async request<T>(
    method: string,
    path: string,
    options: { body?: unknown; token?: string } = {},
  ): Promise<T> {
    const headers: Record<string, string> = {};
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (options.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(new URL(path, this.baseUrl), {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      ...(this.ca ? { tls: { ca: this.ca } } : {}),
    });
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (!res.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      const retryAfter = res.headers.get("retry-after");
      throw new ClearBoxApiError(
        res.status,
        error?.code ?? "unknown",
        error?.message ?? `HTTP ${res.status}`,
        retryAfter ? Number(retryAfter) : undefined,
      );
    }
    return parsed as T;
  }
}
