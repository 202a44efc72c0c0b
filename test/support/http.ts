/** A reply as tests look at it: status, parsed JSON body (or text), headers. */
export interface Reply<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/** A tiny JSON client for one base URL. */
export function api(baseUrl: string) {
  async function call<T = any>(
    method: string,
    path: string,
    options: { body?: unknown; raw?: string; token?: string; headers?: Record<string, string> } = {},
  ): Promise<Reply<T>> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    let body: string | undefined;
    if (options.raw !== undefined) {
      body = options.raw;
      headers["content-type"] ??= "application/json";
    } else if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers["content-type"] = "application/json";
    }
    const res = await fetch(new URL(path, baseUrl), { method, headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {}
    return { status: res.status, body: parsed as T, headers: res.headers };
  }
  return {
    call,
    get: <T = any>(path: string, token?: string) => call<T>("GET", path, { token }),
    post: <T = any>(path: string, body?: unknown, token?: string) => call<T>("POST", path, { body, token }),
    put: <T = any>(path: string, body?: unknown, token?: string) => call<T>("PUT", path, { body, token }),
    delete: <T = any>(path: string, token?: string, body?: unknown) =>
      call<T>("DELETE", path, { token, body }),
  };
}

export type Api = ReturnType<typeof api>;

let counter = 0;
/** A username no other test in this run uses. */
export function uniqueUsername(prefix = "user"): string {
  counter++;
  return `${prefix}_${process.pid}_${counter}_${Math.floor(Math.random() * 1e6)}`.slice(0, 32);
}

/** Registers an account and logs a new device in; returns ids and tokens. */
export async function registerAndLogin(client: Api, password = "correct horse battery") {
  const username = uniqueUsername();
  const created = await client.post("/v1/accounts", { username, password });
  if (created.status !== 201)
    throw new Error(`register failed: ${created.status} ${JSON.stringify(created.body)}`);
  const session = await client.post("/v1/sessions", { username, password, registrationId: 4242 });
  if (session.status !== 201)
    throw new Error(`login failed: ${session.status} ${JSON.stringify(session.body)}`);
  return { username, password, ...(session.body as SessionBody) };
}

/**
 * Logs `user` in once more and returns the session: as a new device (`registrationId` as libsignal's,
 * 1–16380; the default) or on an existing one (`deviceId`, which a login may name). Throws with the
 * status and body unless the login answers 201.
 */
export async function loginDevice(
  client: Api,
  user: { username: string; password: string },
  device: { registrationId: number } | { deviceId: number } = { registrationId: 4242 },
): Promise<SessionBody> {
  const session = await client.post("/v1/sessions", {
    username: user.username,
    password: user.password,
    ...device,
  });
  if (session.status !== 201)
    throw new Error(`login failed: ${session.status} ${JSON.stringify(session.body)}`);
  return session.body as SessionBody;
}

export interface SessionBody {
  userId: string;
  deviceId: number;
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
}

/**
 * Makes two users related for presence (docs/PROTOCOL.md, "Presence"): `a` creates a group inviting
 * `b`, who accepts. Returns the group id.
 */
export async function relate(
  client: Api,
  a: { accessToken: string },
  b: { userId: string; accessToken: string },
): Promise<string> {
  const created = await client.post("/v1/groups", { name: "related", members: [b.userId] }, a.accessToken);
  if (created.status !== 201) throw new Error(`group creation failed: ${created.status}`);
  const { groupId } = created.body as { groupId: string };
  const accepted = await client.post(`/v1/invitations/${groupId}/accept`, undefined, b.accessToken);
  if (accepted.status !== 204) throw new Error(`accept failed: ${accepted.status}`);
  return groupId;
}

/**
 * Whether a session still works, as HTTP statuses: its access token on an authenticated route
 * (`GET /v1/devices`: 200 when it works) and its refresh token (`POST /v1/sessions/refresh`: 201
 * when it works; a working refresh token is spent by this call).
 */
export async function sessionState(client: Api, session: { accessToken: string; refreshToken: string }) {
  const access = await client.get("/v1/devices", session.accessToken);
  const refresh = await client.post("/v1/sessions/refresh", { refreshToken: session.refreshToken });
  return { access: access.status, refresh: refresh.status };
}
