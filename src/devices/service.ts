import { randomInt } from "node:crypto";
import { and, asc, eq, inArray, lt, sql } from "drizzle-orm";
import { union } from "drizzle-orm/pg-core";
import { settledWithin } from "../../actors/index.ts";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import type { Db, Tx } from "../db/index.ts";
import { accounts, deviceRemovals, devices } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { Logger } from "../observability/logger.ts";
import { MAX_DEVICE_ID } from "../protocol/ids.ts";

/** A new device's first token generation is below this (2^30): far from the int column's 2^31 - 1. */
const FIRST_GENERATION_BOUND = 2 ** 30;

export interface DeviceInfo {
  deviceId: number;
  name: string | null;
  createdAt: number;
  lastSeen: number;
}

/** Called after a device is removed, so other stores (keys, queues, sockets) can let go of it. */
export type DeviceRemovedListener = (userId: string, deviceId: number) => Promise<void> | void;

/** Devices of an account: allocation of ids, listing, removal, and token revocation by generation. */
export class DeviceService {
  private readonly removedListeners: DeviceRemovedListener[] = [];
  private readonly addedListeners: ((userId: string, deviceId: number) => Promise<void> | void)[] = [];

  /** `logger` hears removals whose follow-ups failed again in `finishRemovals` (error level). */
  constructor(
    private readonly db: Db,
    private readonly audit?: AuditTrail,
    private readonly logger?: Logger,
  ) {}

  /** Registers a listener run after every new device (`added`, which resolves once it has). */
  onAdded(listener: (userId: string, deviceId: number) => Promise<void> | void): void {
    this.addedListeners.push(listener);
  }

  /** Registers a listener run after every device removal. */
  onRemoved(listener: DeviceRemovedListener): void {
    this.removedListeners.push(listener);
  }

  /**
   * Creates a device with the smallest free id inside the caller's transaction `tx`, which then
   * holds the account's row until it ends: a login creates its device, issues its tokens and writes
   * its audit entry in one transaction, so a refused entry leaves no device behind. `conflict` when
   * all 127 are taken, `unauthorized` ("account erased") when the account is gone (erased
   * meanwhile), nothing written. Its token generation starts at a random number (1 to 2^30, room
   * for a billion revocations in the int column): ids are reused, and a removed device's access
   * tokens, still unexpired, name the id and the generation it had; had the new device started at
   * 0 as well, they would be valid for it. Returns the new id; once `tx` has committed the caller
   * runs `added`.
   */
  async createIn(tx: Tx, userId: string, registrationId: number, name: string | null): Promise<number> {
    // Serialises concurrent logins of one account so two devices never pick the same free id.
    const [account] = await tx
      .select({ id: accounts.id })
      .from(accounts)
      .where(eq(accounts.id, userId))
      .for("update");
    // Erased while this waited for the row (the foreign key would refuse the device: a 500).
    if (!account) throw new DomainError("unauthorized", "account erased");
    // Ids of removals still finishing are taken too (`deviceRemovals`). One statement, so one
    // snapshot: a removal committing between two reads could not make its id look free.
    const taken = await union(
      tx.select({ deviceId: devices.deviceId }).from(devices).where(eq(devices.userId, userId)),
      tx
        .select({ deviceId: deviceRemovals.deviceId })
        .from(deviceRemovals)
        .where(eq(deviceRemovals.userId, userId)),
    );
    taken.sort((a, b) => a.deviceId - b.deviceId);
    let deviceId = 1;
    for (const row of taken) {
      if (row.deviceId !== deviceId) break;
      deviceId++;
    }
    if (deviceId > MAX_DEVICE_ID) {
      throw new DomainError("conflict", `an account can have at most ${MAX_DEVICE_ID} devices`);
    }
    const tokenGeneration = randomInt(1, FIRST_GENERATION_BOUND);
    await tx.insert(devices).values({ userId, deviceId, registrationId, name, tokenGeneration });
    return deviceId;
  }

  /** Runs the `onAdded` listeners for a device `createIn` made, once its transaction has committed. */
  async added(userId: string, deviceId: number): Promise<void> {
    for (const listener of this.addedListeners) await listener(userId, deviceId);
  }

  /** The device's current token generation, or undefined when it does not exist. */
  async tokenGeneration(userId: string, deviceId: number): Promise<number | undefined> {
    const [row] = await this.db
      .select({ generation: devices.tokenGeneration })
      .from(devices)
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
    return row?.generation;
  }

  /**
   * The token generation of every device of these users, in one query (`user_id IN (...)`, the
   * primary key's first column): what `SocketRevalidation` compares its sockets with. A device that
   * does not exist has no row. At most a few thousand users per call (one bind parameter each).
   */
  async tokenGenerations(
    userIds: readonly string[],
  ): Promise<{ userId: string; deviceId: number; generation: number }[]> {
    if (userIds.length === 0) return [];
    return this.db
      .select({ userId: devices.userId, deviceId: devices.deviceId, generation: devices.tokenGeneration })
      .from(devices)
      .where(inArray(devices.userId, [...userIds]));
  }

  /** Marks the device as seen now. */
  async touch(userId: string, deviceId: number): Promise<void> {
    await this.db
      .update(devices)
      .set({ lastSeen: sql`now()` })
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
  }

  /** Invalidates every access token issued to the device so far. */
  async revokeTokens(userId: string, deviceId: number): Promise<void> {
    await this.db
      .update(devices)
      .set({ tokenGeneration: sql`${devices.tokenGeneration} + 1` })
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
  }

  /** The account's devices, oldest id first. */
  async list(userId: string): Promise<DeviceInfo[]> {
    const rows = await this.db
      .select()
      .from(devices)
      .where(eq(devices.userId, userId))
      .orderBy(asc(devices.deviceId));
    return rows.map((r) => ({
      deviceId: r.deviceId,
      name: r.name,
      createdAt: r.createdAt.getTime(),
      lastSeen: r.lastSeen.getTime(),
    }));
  }

  /**
   * Removes the device and, by cascade, its refresh tokens; `not_found` when there is no such device.
   * The removal is durable first: its `device_removals` row and its `device.remove` audit entry are
   * written in the same transaction as the delete (an audit write that fails rolls the removal
   * back); the row is deleted once every listener has run (then the id is free again). Should a
   * listener throw, the row stays, the error is thrown (the request answers 500, a retry 404), and
   * `finishRemovals` runs the listeners again later; so does it when the node dies in between.
   */
  async remove(userId: string, deviceId: number): Promise<void> {
    const event: AuditEvent = {
      action: "device.remove",
      actor: { user: userId },
      subject: userId,
      details: { deviceId },
    };
    let audited = false;
    const claim = await this.db.transaction(async (tx) => {
      const rows = await tx
        .delete(devices)
        .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)))
        .returning({ deviceId: devices.deviceId });
      if (rows.length === 0) return undefined;
      const [row] = await tx
        .insert(deviceRemovals)
        .values({ userId, deviceId })
        .returning({ claim: sql<string>`${deviceRemovals.removedAt}::text` });
      // In the removal's own transaction, last (the chain's lock is held to the commit): the
      // removal and its entry commit together, or neither does (a node dying right after the
      // commit cannot leave the removal unaudited).
      if (this.audit?.recordIn) {
        await this.audit.recordIn(tx, [event]);
        audited = true;
      }
      return row?.claim;
    });
    if (claim === undefined) throw new DomainError("not_found", `device ${deviceId} does not exist`);
    // A trail that cannot write inside the transaction: recorded once the row is gone, before the
    // follow-ups (should one of them fail, the removal itself still happened and is in the trail).
    if (!audited) await this.audit?.record(event);
    await this.followUp(userId, deviceId, claim);
  }

  /**
   * Runs the listeners again for removals whose follow-ups did not all finish (a listener threw, or
   * the node died before the end) and whose last attempt started more than `olderThanMs` ago
   * (default 60 s: a removal in progress, here or on another node, is left to it). Each one is
   * claimed first (`removed_at` set to now, compare-and-set on its old value), so of two passes
   * (two nodes' retention jobs) only one runs it, and only the last claimant frees the id: a pass
   * whose follow-up ended after a later claim leaves the row to that claim. A follow-up not done
   * within `timeoutMs` (default 30 s, below `olderThanMs`) counts as failed and the pass moves on
   * (a hanging listener must not hang the retention pass or node stop); should it finish later
   * under its claim, it frees the id then. At most `limit` (default 100) per call, oldest first.
   * Returns how many finished and how many failed again (those stay for a later call). Each claim
   * counts an attempt (`attempts`); each failed one is an error log line with the user id, device id,
   * attempts so far and the error's class (or that it did not finish in time): the row keeps the
   * device id from new devices until its follow-ups succeed, so an operator must see one that never
   * does (also `removalStats`, the metric). Called by the retention job. Each listener is idempotent.
   */
  async finishRemovals(options: { olderThanMs?: number; limit?: number; timeoutMs?: number } = {}): Promise<{
    finished: number;
    failed: number;
  }> {
    const olderThanMs = options.olderThanMs ?? 60_000;
    const timeoutMs = options.timeoutMs ?? 30_000;
    const stale = () =>
      lt(deviceRemovals.removedAt, sql`now() - make_interval(secs => ${olderThanMs / 1000})`);
    const rows = await this.db
      .select({ userId: deviceRemovals.userId, deviceId: deviceRemovals.deviceId })
      .from(deviceRemovals)
      .where(stale())
      .orderBy(asc(deviceRemovals.removedAt))
      .limit(options.limit ?? 100);
    const report = { finished: 0, failed: 0 };
    for (const row of rows) {
      // The claim: only a row still stale (no other pass claimed it since the select) is taken.
      const [claimed] = await this.db
        .update(deviceRemovals)
        .set({ removedAt: sql`clock_timestamp()`, attempts: sql`${deviceRemovals.attempts} + 1` })
        .where(and(eq(deviceRemovals.userId, row.userId), eq(deviceRemovals.deviceId, row.deviceId), stale()))
        .returning({
          claim: sql<string>`${deviceRemovals.removedAt}::text`,
          attempts: deviceRemovals.attempts,
        });
      if (!claimed) continue;
      const followUp = this.followUp(row.userId, row.deviceId, claimed.claim);
      // Late, it goes on; a later failure of it is nobody's here (the row stays for a later pass).
      followUp.catch(() => undefined);
      let failure: unknown;
      const done = await settledWithin(followUp, timeoutMs).catch((error: unknown) => {
        failure = error;
        return false;
      });
      if (done) {
        report.finished++;
        continue;
      }
      report.failed++;
      this.logger?.error(
        {
          user: row.userId,
          deviceId: row.deviceId,
          attempts: claimed.attempts,
          ...(failure === undefined ? { timeoutMs } : { err: failure }),
        },
        failure === undefined
          ? "a device removal's follow-ups did not finish in time again: its device id stays blocked"
          : "a device removal's follow-ups failed again: its device id stays blocked",
      );
    }
    return report;
  }

  /**
   * Removals whose follow-ups have not all finished (rows of `device_removals`, every node's), and
   * the most attempts any of them has had (0 when none): what `clearbox_device_removals_unfinished`
   * and `clearbox_device_removal_attempts_max` report. One aggregate query.
   */
  async removalStats(): Promise<{ unfinished: number; maxAttempts: number }> {
    const [row] = await this.db
      .select({
        unfinished: sql<number>`count(*)::int`,
        maxAttempts: sql<number>`coalesce(max(${deviceRemovals.attempts}), 0)::int`,
      })
      .from(deviceRemovals);
    return { unfinished: Number(row?.unfinished ?? 0), maxAttempts: Number(row?.maxAttempts ?? 0) };
  }

  /**
   * The listeners, in order; then the `device_removals` row goes and the id is free again, unless
   * another attempt claimed the row meanwhile (`claim`, the row's `removed_at` as text, no longer
   * matches): that attempt's follow-up may still be running, and it frees the id when done.
   */
  private async followUp(userId: string, deviceId: number, claim: string): Promise<void> {
    for (const listener of this.removedListeners) await listener(userId, deviceId);
    await this.db
      .delete(deviceRemovals)
      .where(
        and(
          eq(deviceRemovals.userId, userId),
          eq(deviceRemovals.deviceId, deviceId),
          eq(deviceRemovals.removedAt, sql`${claim}::timestamptz`),
        ),
      );
  }
}
