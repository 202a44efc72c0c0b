/** The local client process's API: every call carries the secret the process printed in its URL. */

const params = new URLSearchParams(window.location.search);
const fromUrl = params.get("secret");
if (fromUrl) {
  sessionStorage.setItem("clearbox.secret", fromUrl);
  // Keep the secret out of the address bar and history once it is stored.
  window.history.replaceState(null, "", window.location.pathname);
}
const secret = sessionStorage.getItem("clearbox.secret") ?? "";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A local API path with each interpolated value percent-encoded as one path segment
 * (`encodeURIComponent`): ids come from the ClearBox server through the local process, and one
 * such as `../../api/erase` or `x?y` must not address another route (`apiPath\`/api/groups/${id}/leave\``).
 */
export function apiPath(strings: TemplateStringsArray, ...segments: string[]): string {
  return strings.reduce(
    (path, text, i) => path + text + (i < segments.length ? encodeURIComponent(segments[i]) : ""),
    "",
  );
}

/** Calls the local process's API at `path` (built with `apiPath` when it holds an id); throws ApiError when refused. */
export async function api<T = Record<string, unknown>>(
  method: "GET" | "POST",
  path: string,
  body?: unknown,
): Promise<T> {
  const response = await fetch(path, {
    method,
    headers: {
      "x-clearbox-secret": secret,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = (await response.json().catch(() => ({}))) as T & { error?: string };
  if (!response.ok) throw new ApiError(response.status, data.error ?? `HTTP ${response.status}`);
  return data;
}

/** The process's event stream (messages, presence, key changes, connection state); reopened when it drops. */
export function events(onEvent: (event: ServerEvent) => void): () => void {
  let socket: WebSocket | undefined;
  let closed = false;
  let delay = 250;
  const open = () => {
    const url = new URL("/api/events", window.location.href);
    url.protocol = "ws:";
    url.searchParams.set("secret", secret);
    socket = new WebSocket(url);
    socket.onopen = () => {
      delay = 250;
    };
    socket.onmessage = (message) => onEvent(JSON.parse(String(message.data)) as ServerEvent);
    socket.onclose = () => {
      if (closed) return;
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 5000);
    };
  };
  open();
  return () => {
    closed = true;
    socket?.close();
  };
}

export interface Account {
  username: string;
  userId: string;
  deviceId: number;
  serverUrl: string;
}

export interface Message {
  id: string;
  conversation: string;
  from: { userId: string; username: string; deviceId: number };
  group?: string;
  outgoing: boolean;
  text: string;
  ts: number;
  state: "queued" | "sent" | "failed" | "received";
  /** On the event of a failed send only (the history keeps no reason): why, as the server said. */
  refusal?: Refusal;
}

/** Why a send failed (the SDK's MessageRefusal): a protocol reject code or an HTTP error code. */
export interface Refusal {
  code: string;
  message?: string;
  /** For `rate_limited`: the ms until the server takes sends again. */
  retryAfterMs?: number;
}

export interface Contact {
  userId: string;
  username: string;
  online: boolean;
  unread: number;
  verified: boolean;
  changed: boolean;
}

export interface Group {
  groupId: string;
  name: string;
  unread: number;
}

export interface Invitation {
  groupId: string;
  name: string;
  invitedBy: string;
}

export interface SafetyNumber {
  deviceId: number;
  safetyNumber: string;
  verified: boolean;
  changed: boolean;
}

export type ServerEvent =
  | { type: "message"; message: Message }
  | { type: "presence"; userId: string; username?: string; online: boolean; lastSeen: number }
  | { type: "identityChanged"; userId: string; username?: string; deviceId: number }
  | {
      type: "status";
      status: "online" | "offline" | "stopped" | "signed-out";
      code?: number;
      reason?: string;
    };
