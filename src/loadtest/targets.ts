import { randomBytes, randomUUID } from "node:crypto";
import { ClearBoxClient } from "../client/index.ts";
import { inPool } from "./pool.ts";

/** One device of a virtual user, as the harness connects it. */
export interface VirtualDevice {
  userId: string;
  deviceId: number;
  /** The node this device connects to. */
  url: string;
  token?: string;
  /** The device's Signal state when the run uses real sessions (`--e2ee`). */
  signal?: ClearBoxClient;
}

/** What the harness needs from a server under test: accounts, groups and socket addresses. */
export interface Target {
  kind: "clearbox" | "relay";
  urls: string[];
  /** `count` users with one device each, spread round-robin over the target's nodes. */
  createUsers(count: number, onProgress: (done: number) => void, e2ee?: boolean): Promise<VirtualDevice[]>;
  /** `count` devices spread over `accounts` accounts (at most 120 devices each; connection storm). */
  createDevices(
    count: number,
    accounts: number,
    onProgress: (done: number) => void,
  ): Promise<VirtualDevice[]>;
  /** A group of `owner` and `members`; returns its id. */
  createGroup(owner: VirtualDevice, members: VirtualDevice[]): Promise<string>;
  socket(device: VirtualDevice): { url: string; headers?: Record<string, string> };
}

const PASSWORD = "loadtest password 0123";
const DEVICES_PER_ACCOUNT = 120;

const wsBase = (url: string) => url.replace(/^http/, "ws");

async function post<T>(url: string, path: string, body: unknown, token?: string): Promise<T> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(new URL(path, url), { method: "POST", headers, body: JSON.stringify(body) });
    const text = await res.text();
    if (res.ok) return (text ? JSON.parse(text) : undefined) as T;
    // A busy server (argon2 backlog) may answer 429/503: back off a little, a bounded number of times.
    if ((res.status === 429 || res.status >= 500) && attempt < 5) {
      await Bun.sleep(200 * (attempt + 1));
      continue;
    }
    throw new Error(`POST ${path} → ${res.status} ${text.slice(0, 200)}`);
  }
}

interface Session {
  userId: string;
  deviceId: number;
  accessToken: string;
}

const newUsername = () => `lt_${randomBytes(8).toString("hex")}`;

/** Logs `username` in on `url` as a new device (the i-th the harness makes). */
async function login(url: string, username: string, i: number): Promise<VirtualDevice> {
  const s = await post<Session>(url, "/v1/sessions", {
    username,
    password: PASSWORD,
    registrationId: 1 + (i % 16000),
  });
  return { userId: s.userId, deviceId: s.deviceId, url, token: s.accessToken };
}

/** A running ClearBox deployment (one or several nodes). Accounts are made through the public API. */
export function clearboxTarget(urls: string[], concurrency: number): Target {
  const pick = (i: number) => urls[i % urls.length] as string;
  return {
    kind: "clearbox",
    urls,
    createUsers(count, onProgress, e2ee = false) {
      return inPool(
        count,
        concurrency,
        async (i) => {
          const url = pick(i);
          const username = newUsername();
          if (e2ee) {
            const signal = ClearBoxClient.open({ serverUrl: url, storePath: ":memory:" });
            await signal.register(username, PASSWORD);
            const tokens = signal.store.get<Session>("tokens");
            return {
              userId: signal.userId,
              deviceId: signal.deviceId,
              url,
              token: tokens?.accessToken,
              signal,
            };
          }
          await post(url, "/v1/accounts", { username, password: PASSWORD });
          return login(url, username, i);
        },
        onProgress,
      );
    },
    async createDevices(count, wanted, onProgress) {
      const accounts = Math.max(wanted, Math.ceil(count / DEVICES_PER_ACCOUNT));
      const names = await inPool(accounts, concurrency, async (i) => {
        const username = newUsername();
        await post(pick(i), "/v1/accounts", { username, password: PASSWORD });
        return username;
      });
      return inPool(count, concurrency, (i) => login(pick(i), names[i % accounts] as string, i), onProgress);
    },
    async createGroup(owner, members) {
      // Members are invited, and each accepts once (one device per account speaks for it).
      const invitees = new Map<string, VirtualDevice>();
      for (const m of members)
        if (m.userId !== owner.userId && !invitees.has(m.userId)) invitees.set(m.userId, m);
      const { groupId } = await post<{ groupId: string }>(
        owner.url,
        "/v1/groups",
        { name: "loadtest", members: [...invitees.keys()] },
        owner.token,
      );
      const accepting = [...invitees.values()];
      await inPool(accepting.length, concurrency, (i) => {
        const m = accepting[i] as VirtualDevice;
        return post(m.url, `/v1/invitations/${groupId}/accept`, undefined, m.token);
      });
      return groupId;
    },
    socket(device) {
      return { url: `${wsBase(device.url)}/v1/ws`, headers: { authorization: `Bearer ${device.token}` } };
    },
  };
}

/** The raw relay: users are just ids, groups are registered with one POST. */
export function relayTarget(url: string): Target {
  return {
    kind: "relay",
    urls: [url],
    async createUsers(count, onProgress) {
      const users = Array.from({ length: count }, () => ({ userId: randomUUID(), deviceId: 1, url }));
      onProgress(count);
      return users;
    },
    async createDevices(count, _accounts, onProgress) {
      return this.createUsers(count, onProgress);
    },
    async createGroup(owner, members) {
      const groupId = randomUUID();
      const ids = [owner.userId, ...members.map((m) => m.userId)];
      await fetch(new URL("/groups", url), {
        method: "POST",
        body: JSON.stringify({ groupId, members: ids }),
      });
      return groupId;
    },
    socket(device) {
      return { url: `${wsBase(device.url)}/v1/ws?user=${device.userId}` };
    },
  };
}
