import type { Redis } from "ioredis";
import { type Logger, silentLogger } from "./logger.ts";
import {
  type MemberInfo,
  type MemberStats,
  type MemberStatus,
  type Membership,
  type MembershipListener,
  viewSignature,
} from "./membership.ts";

/** Options for {@link RedisMembership}. */
export interface RedisMembershipOptions {
  nodeId: string;
  /** A Redis URL (the membership owns and closes its connections) or a client to share (left open). */
  redis: string | Redis;
  /** Key and channel prefix, e.g. `clearbox:cluster`; tests use a random one per run. */
  prefix: string;
  /** How often this node refreshes its key and re-reads the view. Default 1000 ms. */
  heartbeatMs?: number;
  /** Key lifetime: a node silent this long is dead. Default 3× heartbeat. */
  ttlMs?: number;
  logger?: Logger;
}

/**
 * ioredis options that bound a Redis that stops answering without closing the connection (a hung
 * server, a link dropping every packet while the kernel still acknowledges). ioredis has neither by
 * default, so every command on such a connection waited for good: logins (their rate limits),
 * upgrades (the connect budget), heartbeats and a node's stop (`QUIT`) with them. `commandTimeout` rejects a
 * command unanswered for 5 s ("Command timed out"), so the caller answers with an error;
 * `socketTimeout` destroys a connection that has received nothing for 5 s while commands wait on
 * it, so ioredis reconnects (its `retryStrategy`) instead of waiting on the silent one. Redis
 * answers the commands ClearBox sends in well under a millisecond; none of them blocks.
 * Options: ioredis `RedisOptions` (6.0).
 */
export const REDIS_STALL_LIMITS = { commandTimeout: 5_000, socketTimeout: 5_000 } as const;

/**
 * Closes an ioredis client: `quit()` (waits for Redis to answer, so queued commands go first) while
 * it is connected, else `disconnect()` at once (quit() would wait for a reconnect while Redis is
 * away). Rejects as quit() does; nothing to do for `undefined`.
 */
export async function closeRedis(client: Redis | undefined): Promise<void> {
  if (client?.status === "ready") await client.quit();
  else client?.disconnect();
}

/**
 * Membership in Redis: each node keeps `<prefix>:member:<id>` alive with a TTL (PX), registers in
 * the `<prefix>:nodes` set, and announces joins, leaves and status changes on `<prefix>:events`.
 * Everyone re-reads the view on each heartbeat and on each announcement, so an announced change
 * propagates in one round trip and a crash after at most TTL + one heartbeat.
 */
export class RedisMembership implements Membership {
  readonly self: string;
  private readonly redis: Redis;
  private readonly ownsRedis: boolean;
  private subscriber: Redis | undefined;
  private readonly prefix: string;
  private readonly heartbeatMs: number;
  private readonly ttlMs: number;
  private readonly logger: Logger;
  private readonly listeners = new Set<MembershipListener>();
  private info: MemberInfo | undefined;
  private stats: () => MemberStats = () => ({ actors: 0, connections: 0 });
  private view: MemberInfo[] = [];
  private dead: string[] = [];
  /**
   * Nodes whose `leave` announcement this node heard, until they join again (heard, or seen alive by
   * a read that began after the leave was heard: a `join` missed while this node's subscription was
   * down) or leave the registry (forgotten): `leftNodes` tells those among the dead from crashed
   * ones. The value: `refreshSeq` when the leave was heard.
   */
  private readonly departed = new Map<string, number>();
  private signature = "";
  private timer: ReturnType<typeof setInterval> | undefined;
  private refreshSeq = 0;
  private appliedSeq = 0;
  private closed = false;
  /** Set once the connection to Redis was lost after joining: the next `ready` is a reconnect. */
  private disconnected = false;
  /**
   * Until then (ms since epoch), members of the view before a Redis reconnect stay in the view even
   * when their keys are missing: see `reassert`.
   */
  private graceUntil = 0;

  constructor(options: RedisMembershipOptions) {
    if (!options.nodeId) throw new Error('RedisMembership requires options "nodeId"');
    if (!options.prefix) throw new Error('RedisMembership requires options "prefix"');
    this.self = options.nodeId;
    this.prefix = options.prefix;
    this.heartbeatMs = options.heartbeatMs ?? 1000;
    this.ttlMs = options.ttlMs ?? this.heartbeatMs * 3;
    if (this.ttlMs <= this.heartbeatMs) {
      throw new Error(
        `RedisMembership requires ttlMs (${this.ttlMs}) above heartbeatMs (${this.heartbeatMs})`,
      );
    }
    this.logger = options.logger ?? silentLogger;
    if (typeof options.redis === "string") {
      // Reconnect attempts at most a heartbeat apart (ioredis waits up to 2 s by default): after a
      // Redis restart every node is back within a heartbeat, inside the others' grace (`reassert`).
      const heartbeatMs = this.heartbeatMs;
      // Required here, not imported at the top: a node without REDIS_URL (the embedded default)
      // never loads ioredis, and this constructor is synchronous.
      const { Redis } = require("ioredis") as typeof import("ioredis");
      this.redis = new Redis(options.redis, {
        lazyConnect: false,
        maxRetriesPerRequest: 2,
        retryStrategy: (times) => Math.min(times * 50, heartbeatMs),
        ...REDIS_STALL_LIMITS,
      });
      // Without a listener ioredis prints "Unhandled error event" on every failed reconnect.
      this.redis.on("error", (error) => this.logFailure(error));
      this.ownsRedis = true;
    } else {
      this.redis = options.redis;
      this.ownsRedis = false;
    }
  }

  private memberKey(nodeId: string): string {
    return `${this.prefix}:member:${nodeId}`;
  }

  private get nodesKey(): string {
    return `${this.prefix}:nodes`;
  }

  private get channel(): string {
    return `${this.prefix}:events`;
  }

  async join(info: { address: string; status?: MemberStatus }, stats: () => MemberStats): Promise<void> {
    this.stats = stats;
    this.info = {
      nodeId: this.self,
      address: info.address,
      status: info.status ?? "up",
      actors: 0,
      connections: 0,
      startedAt: Date.now(),
    };
    await this.beat();
    this.redis.on("close", () => {
      if (this.info) this.disconnected = true;
    });
    this.redis.on("ready", () => {
      if (!this.disconnected || this.closed) return;
      this.disconnected = false;
      void this.reassert().catch(this.logFailure);
    });
    this.subscriber = this.redis.duplicate();
    this.subscriber.on("message", (_channel: string, message: string) => {
      this.heard(message);
      void this.refresh().catch(this.logFailure);
    });
    this.subscriber.on("error", this.logFailure);
    await this.subscriber.subscribe(this.channel);
    await this.redis.publish(this.channel, `join ${this.self}`);
    await this.refresh();
    this.timer = setInterval(() => void this.tick(), this.heartbeatMs);
  }

  async setStatus(status: MemberStatus): Promise<void> {
    if (!this.info || this.info.status === status) return;
    this.info.status = status;
    await this.beat();
    await this.redis.publish(this.channel, `status ${this.self} ${status}`);
    await this.refresh();
  }

  members(): readonly MemberInfo[] {
    return this.view;
  }

  deadNodes(): readonly string[] {
    return this.dead;
  }

  leftNodes(): readonly string[] {
    return this.departed.size === 0 ? [] : this.dead.filter((id) => this.departed.has(id));
  }

  /** Notes a `leave <id>` announcement (a graceful stop), and forgets it at that node's `join <id>`. */
  private heard(message: string): void {
    const [kind, nodeId] = message.split(" ");
    if (!nodeId || nodeId === this.self) return;
    if (kind === "leave") this.departed.set(nodeId, this.refreshSeq);
    else if (kind === "join") this.departed.delete(nodeId);
  }

  async forget(nodeId: string): Promise<void> {
    await this.redis.srem(this.nodesKey, nodeId);
  }

  async refresh(): Promise<void> {
    if (this.closed) return;
    const seq = ++this.refreshSeq;
    const ids = await this.redis.smembers(this.nodesKey);
    const values = ids.length > 0 ? await this.redis.mget(...ids.map((id) => this.memberKey(id))) : [];
    // An older read finishing after a newer one must not roll the view back.
    if (seq < this.appliedSeq || this.closed) return;
    this.appliedSeq = seq;
    const view: MemberInfo[] = [];
    const dead: string[] = [];
    ids.forEach((id, i) => {
      const raw = values[i];
      if (id === this.self && this.info) view.push(this.selfInfo());
      else if (raw) {
        view.push(JSON.parse(raw) as MemberInfo);
        // Alive in a read begun after its leave was heard: it joined again (its `join` missed), and
        // a later death is a death, not that old leave.
        const heardAt = this.departed.get(id);
        if (heardAt !== undefined && seq > heardAt) this.departed.delete(id);
      } else if (!this.inGrace(id)) dead.push(id);
    });
    if (Date.now() < this.graceUntil) {
      // Redis came back empty a moment ago: members not heard from again yet keep their place.
      const seen = new Set(view.map((member) => member.nodeId));
      for (const member of this.view) if (!seen.has(member.nodeId)) view.push(member);
      if (this.info && !seen.has(this.self)) view.push(this.selfInfo());
    }
    view.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
    this.view = view;
    this.dead = dead;
    // Off the registry (forgotten after its inbox was adopted, or it left with `forget`): done.
    if (this.departed.size > 0)
      for (const id of this.departed.keys()) if (!ids.includes(id)) this.departed.delete(id);
    const signature = viewSignature(view, dead);
    if (signature === this.signature) return;
    this.signature = signature;
    for (const listener of this.listeners) listener(view);
  }

  /** True while `nodeId` was a live member before a Redis reconnect and may not have re-asserted yet. */
  private inGrace(nodeId: string): boolean {
    return Date.now() < this.graceUntil && this.view.some((member) => member.nodeId === nodeId);
  }

  /**
   * After a reconnect to Redis. A restarted Redis without persistence comes back empty: every
   * member key, the registry and the subscriptions are gone. This node writes its key and registry
   * entry again at once (not at its next heartbeat) and announces itself, and for one TTL keeps the
   * members it saw before in its view even while their keys are missing: every live node writes
   * its key within a heartbeat of the reconnect, so a member still missing after a TTL is dead, as
   * it would be without the restart. Without this the first node back saw only itself for up to a
   * heartbeat, moved every actor to itself and handed them back a moment later, and the rings
   * disagreed meanwhile. (ioredis subscribes the subscriber again by itself, `autoResubscribe`.)
   */
  private async reassert(): Promise<void> {
    // A TTL, plus a heartbeat for the others' reconnect attempts (at most a heartbeat apart).
    this.graceUntil = Date.now() + this.ttlMs + this.heartbeatMs;
    this.logger.info({ nodeId: this.self }, "redis is back: re-asserting membership");
    await this.beat();
    await this.redis.publish(this.channel, `join ${this.self}`);
    await this.refresh();
  }

  onChange(listener: MembershipListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Deletes this node's key (and its registry entry with `forget`), announces the leave and closes
   * the connections. Rejects with Redis's error when the key could not be deleted (Redis away): the
   * membership is closed all the same (no heartbeat, no re-assert on a reconnect, connections
   * dropped), and the key expires by its TTL, as a crashed node's would.
   */
  async leave(options?: { forget?: boolean }): Promise<void> {
    if (this.closed) return;
    this.stopTimer();
    try {
      const tx = this.redis.multi().del(this.memberKey(this.self));
      if (options?.forget) tx.srem(this.nodesKey, this.self);
      await tx.exec();
      await this.redis.publish(this.channel, `leave ${this.self}`);
    } finally {
      this.closed = true;
      await closeRedis(this.subscriber).catch(() => undefined);
      if (this.ownsRedis) await closeRedis(this.redis).catch(() => undefined);
    }
  }

  async abort(): Promise<void> {
    this.stopTimer();
    this.closed = true;
    this.subscriber?.disconnect();
    if (this.ownsRedis) this.redis.disconnect();
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private selfInfo(): MemberInfo {
    return { ...(this.info as MemberInfo), ...this.stats() };
  }

  private async beat(): Promise<void> {
    const info = this.selfInfo();
    await this.redis
      .multi()
      .set(this.memberKey(this.self), JSON.stringify(info), "PX", this.ttlMs)
      .sadd(this.nodesKey, this.self)
      .exec();
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    try {
      await this.beat();
      await this.refresh();
    } catch (error) {
      this.logFailure(error);
    }
  }

  private readonly logFailure = (error: unknown): void => {
    if (!this.closed) this.logger.warn({ err: error, nodeId: this.self }, "membership refresh failed");
  };
}
