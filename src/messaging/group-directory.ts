import { and, eq } from "drizzle-orm";
import type { GroupDirectory } from "../../actors/index.ts";
import type { Db } from "../db/index.ts";
import { blocks, devices, groupMembers, groups } from "../db/schema.ts";
import { ErasureFence } from "../fence/index.ts";

/**
 * Group members (accepted ones: pending invitations live in another table) and their devices, read
 * from PostgreSQL for every group send; members who block the sender get no devices. A member whose
 * erasure has started (the fence) is left out: no envelope is logged for their devices.
 */
export class PostgresGroupDirectory implements GroupDirectory {
  constructor(
    private readonly db: Db,
    private readonly fence: ErasureFence = new ErasureFence(),
  ) {}

  async recipients(groupId: string, sender?: string): Promise<Map<string, number[]> | undefined> {
    const rows = await this.db
      .select({ userId: groupMembers.userId, deviceId: devices.deviceId })
      .from(groupMembers)
      .leftJoin(devices, eq(devices.userId, groupMembers.userId))
      .where(eq(groupMembers.groupId, groupId));
    if (rows.length === 0) {
      const [group] = await this.db.select({ id: groups.id }).from(groups).where(eq(groups.id, groupId));
      return group ? new Map() : undefined;
    }
    const members = new Map<string, number[]>();
    for (const { userId, deviceId } of rows) {
      if (this.fence.has(userId)) continue;
      let list = members.get(userId);
      if (!list) {
        list = [];
        members.set(userId, list);
      }
      if (deviceId !== null) list.push(deviceId);
    }
    if (sender !== undefined) {
      const blockers = await this.db
        .select({ userId: blocks.userId })
        .from(blocks)
        .innerJoin(
          groupMembers,
          and(eq(groupMembers.userId, blocks.userId), eq(groupMembers.groupId, groupId)),
        )
        .where(eq(blocks.blockedUserId, sender));
      for (const { userId } of blockers) if (members.has(userId)) members.set(userId, []);
    }
    return members;
  }
}
