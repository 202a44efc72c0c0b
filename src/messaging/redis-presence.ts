import type Redis from "ioredis";
import {
  type DeviceSocketRef,
  leaseMember,
  type Presence,
  type PresenceState,
  parseLeaseMember,
} from "./presence.ts";

/**
 * Presence in Redis, shared by every node. Per user: a sorted set of device leases
 * (`<p>presence:<user>`, score = lease expiry ms) and a last-seen time (`<p>lastseen:<user>`).
 * Changes are published on `<p>presence` so watchers on every node hear them.
 */
export class RedisPresence implements Presence {
  readonly kind = "redis";
  private readonly listeners = new Set<(state: PresenceState) => void>();
  private subscriber: Redis | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly leaseMs = 60_000,
  ) {}

  private leaseKey(userId: string) {
    return `${this.prefix}presence:${userId}`;
  }

  private lastSeenKey(userId: string) {
    return `${this.prefix}lastseen:${userId}`;
  }

  private get channel() {
    return `${this.prefix}presence`;
  }

  async connected(sockets: DeviceSocketRef[]): Promise<void> {
    if (sockets.length === 0) return;
    const now = Date.now();
    const users = [...new Set(sockets.map((d) => d.userId))];
    const before = await this.states(users);
    const pipeline = this.redis.pipeline();
    for (const socket of sockets) {
      const { userId } = socket;
      pipeline.zadd(this.leaseKey(userId), now + this.leaseMs, leaseMember(socket));
      pipeline.zremrangebyscore(this.leaseKey(userId), "-inf", now);
      // Keys of users who never come back must not outlive the lease by much.
      pipeline.pexpire(this.leaseKey(userId), this.leaseMs * 2);
      pipeline.set(this.lastSeenKey(userId), String(now));
    }
    await pipeline.exec();
    for (const state of before) {
      if (!state.online) await this.publish({ user: state.user, online: true, lastSeen: now });
    }
  }

  async disconnected(socket: DeviceSocketRef): Promise<void> {
    const { userId } = socket;
    const now = Date.now();
    await this.redis
      .multi()
      .zrem(this.leaseKey(userId), leaseMember(socket))
      .set(this.lastSeenKey(userId), String(now))
      .exec();
    const [state] = await this.states([userId]);
    if (!state.online) await this.publish(state);
  }

  async sockets(userId: string): Promise<DeviceSocketRef[]> {
    const members = await this.redis.zrangebyscore(this.leaseKey(userId), `(${Date.now()}`, "+inf");
    return members.flatMap((m) => parseLeaseMember(userId, m) ?? []);
  }

  async states(userIds: string[]): Promise<PresenceState[]> {
    if (userIds.length === 0) return [];
    const now = Date.now();
    const pipeline = this.redis.pipeline();
    for (const user of userIds) {
      pipeline.zcount(this.leaseKey(user), `(${now}`, "+inf");
      pipeline.get(this.lastSeenKey(user));
    }
    const results = (await pipeline.exec()) ?? [];
    return userIds.map((user, i) => ({
      user,
      online: Number(results[2 * i]?.[1] ?? 0) > 0,
      lastSeen: Number(results[2 * i + 1]?.[1] ?? 0),
    }));
  }

  private async publish(state: PresenceState): Promise<void> {
    await this.redis.publish(this.channel, JSON.stringify(state));
  }

  subscribe(listener: (state: PresenceState) => void): () => void {
    this.listeners.add(listener);
    if (!this.subscriber) {
      const subscriber = this.redis.duplicate();
      this.subscriber = subscriber;
      // Errors are logged by the node's own connection (src/node.ts); without a listener ioredis
      // prints "Unhandled error event" for every failed reconnect of this duplicate.
      subscriber.on("error", () => {});
      subscriber.on("message", (_channel: string, text: string) => {
        let state: PresenceState;
        try {
          state = JSON.parse(text) as PresenceState;
        } catch {
          return;
        }
        for (const l of this.listeners) l(state);
      });
      // ioredis re-subscribes by itself after a reconnect; a failure now is retried the same way.
      subscriber.subscribe(this.channel).catch(() => {});
    }
    return () => this.listeners.delete(listener);
  }

  async eraseUser(userId: string): Promise<number> {
    return this.redis.del(this.leaseKey(userId), this.lastSeenKey(userId));
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.subscriber?.quit().catch(() => {});
    this.subscriber = undefined;
  }
}
