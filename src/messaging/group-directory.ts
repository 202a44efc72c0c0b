import { and, eq, inArray } from "drizzle-orm";
import type { GroupDirectory, GroupMembersCache } from "../../actors/index.ts";
import type { Db } from "../db/index.ts";
import { blocks, devices, groupMembers, groups } from "../db/schema.ts";
import { ErasureFence } from "../fence/index.ts";

/**
 * Where the directory hears of device changes (`MessagingService`: this node's, and other nodes'
 * over the list-change channel) and erases a removed device's rows (the envelope log).
 */
export interface DeviceChangeWatch {
  deviceChangeSeq: number;
  devicesChangedSince(userId: string, seq: number): boolean;
  eraseDevice(userId: string, deviceId: number): Promise<number>;
}

/**
 * Group members (accepted ones: pending invitations live in another table) and their devices, read
 * from PostgreSQL; members who block the sender get no devices. A member whose erasure has started
 * (the fence) is left out: no envelope is logged for their devices.
 *
 * With a cache (the group actor's), each call reads only the group's `members_version` (one
 * primary-key row) and reads the members, their devices and the sender's blockers again only when
 * that version moved since they were cached. Triggers (migration 0010) bump it in the same
 * transaction as every change to group_members, devices or blocks that concerns the group, so the
 * first call after such a change commits reads the new members. The fence is applied on every
 * call, never cached: an erasure fences a user before it deletes any row.
 */
export class PostgresGroupDirectory implements GroupDirectory {
  constructor(
    private readonly db: Db,
    private readonly fence: ErasureFence = new ErasureFence(),
    /** Where device changes are heard of; without it no send is checked again (tests of the members alone). */
    private readonly watch?: DeviceChangeWatch,
  ) {}

  /** The device changes heard of so far (`DeviceChangeWatch.deviceChangeSeq`; 0 without a watch). */
  changeSeq(): number {
    return this.watch?.deviceChangeSeq ?? 0;
  }

  /**
   * Of `stored` (user → device ids) a group send was just stored for, those that still exist: for
   * each member whose devices changed since `since`, their devices are read again, and what the log
   * holds for one that is gone is erased (`eraseDevice`, idempotent: the removal's own erasure may
   * come before or after). The same object when no member's devices changed (the usual case: no
   * query).
   */
  async keepExisting(stored: Record<string, number[]>, since: number): Promise<Record<string, number[]>> {
    const watch = this.watch;
    if (!watch || watch.deviceChangeSeq === since) return stored;
    const changed = Object.keys(stored).filter((userId) => watch.devicesChangedSince(userId, since));
    if (changed.length === 0) return stored;
    const rows = await this.db
      .select({ userId: devices.userId, deviceId: devices.deviceId })
      .from(devices)
      .where(inArray(devices.userId, changed));
    const existing = new Set(rows.map((row) => `${row.userId}.${row.deviceId}`));
    let kept: Record<string, number[]> | undefined;
    for (const userId of changed) {
      const list = stored[userId] ?? [];
      const gone = list.filter((deviceId) => !existing.has(`${userId}.${deviceId}`));
      if (gone.length === 0) continue;
      for (const deviceId of gone) await watch.eraseDevice(userId, deviceId);
      kept ??= { ...stored };
      const left = list.filter((deviceId) => !gone.includes(deviceId));
      if (left.length > 0) kept[userId] = left;
      else delete kept[userId];
    }
    return kept ?? stored;
  }

  async recipients(
    groupId: string,
    sender?: string,
    cache: GroupMembersCache = { blockers: new Map() },
  ): Promise<ReadonlyMap<string, readonly number[]> | undefined> {
    // The version before the members: a change committed between the two reads leaves the cache
    // at the older version with the newer members, and the next call reads them again.
    const [group] = await this.db
      .select({ version: groups.membersVersion })
      .from(groups)
      .where(eq(groups.id, groupId));
    if (!group) {
      cache.version = undefined;
      cache.members = undefined;
      cache.blockers.clear();
      return undefined;
    }
    if (cache.members === undefined || cache.version !== group.version) {
      cache.members = await this.members(groupId);
      cache.blockers.clear();
      cache.version = group.version;
    }
    let blockers: ReadonlySet<string> | undefined;
    if (sender !== undefined) {
      blockers = cache.blockers.get(sender);
      if (!blockers) {
        blockers = await this.blockersOf(groupId, sender);
        cache.blockers.set(sender, blockers);
      }
    }
    // The usual case (no member blocks the sender, none is being erased): the cached map itself,
    // not a copy, so the caller can tell an unchanged answer by its identity.
    const filter = (blockers !== undefined && blockers.size > 0) || this.anyFenced(cache.members);
    if (!filter) return cache.members;
    const members = new Map<string, readonly number[]>();
    for (const [userId, list] of cache.members) {
      if (this.fence.has(userId)) continue;
      members.set(userId, blockers?.has(userId) ? [] : list);
    }
    return members;
  }

  /** True when the erasure fence holds one of `members`. */
  private anyFenced(members: ReadonlyMap<string, unknown>): boolean {
    for (const userId of members.keys()) if (this.fence.has(userId)) return true;
    return false;
  }

  /** Every member of the group with its device ids (none: an empty list). */
  private async members(groupId: string): Promise<Map<string, readonly number[]>> {
    const rows = await this.db
      .select({ userId: groupMembers.userId, deviceId: devices.deviceId })
      .from(groupMembers)
      .leftJoin(devices, eq(devices.userId, groupMembers.userId))
      .where(eq(groupMembers.groupId, groupId));
    const members = new Map<string, number[]>();
    for (const { userId, deviceId } of rows) {
      let list = members.get(userId);
      if (!list) {
        list = [];
        members.set(userId, list);
      }
      if (deviceId !== null) list.push(deviceId);
    }
    return members;
  }

  /** The members of the group who block `sender`. */
  private async blockersOf(groupId: string, sender: string): Promise<Set<string>> {
    const rows = await this.db
      .select({ userId: blocks.userId })
      .from(blocks)
      .innerJoin(groupMembers, and(eq(groupMembers.userId, blocks.userId), eq(groupMembers.groupId, groupId)))
      .where(eq(blocks.blockedUserId, sender));
    return new Set(rows.map((row) => row.userId));
  }
}
