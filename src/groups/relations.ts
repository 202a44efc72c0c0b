import { and, eq, inArray, or, sql } from "drizzle-orm";
import { alias } from "drizzle-orm/pg-core";
import type { Db } from "../db/index.ts";
import { blocks, groupMembers } from "../db/schema.ts";

/**
 * Who may see whose presence (issue 13 item 6, docs/PROTOCOL.md "Presence"): a user sees their own,
 * and that of every user they share a group with — both members, so both accepted the invitation
 * (or made the group) — unless either blocks the other. This is Matrix's rule (presence is shared
 * with users who share a room) with consent and blocks added; Signal shares none.
 */
export class PresenceAudience {
  constructor(private readonly db: Db) {}

  /**
   * Of `users`, those `watcher` may see (a subset, possibly empty). One query: the watcher's groups
   * (group_members_user_idx), their members among `users` (the primary key), less blocks either way.
   */
  async visibleTo(watcher: string, users: readonly string[]): Promise<Set<string>> {
    const visible = new Set<string>();
    const others = users.filter((u) => u !== watcher);
    if (users.length !== others.length) visible.add(watcher);
    if (others.length === 0) return visible;
    const mine = alias(groupMembers, "mine");
    const theirs = alias(groupMembers, "theirs");
    const rows = await this.db
      .selectDistinct({ userId: theirs.userId })
      .from(mine)
      .innerJoin(theirs, eq(theirs.groupId, mine.groupId))
      .where(
        and(
          eq(mine.userId, watcher),
          inArray(theirs.userId, others),
          sql`not exists (${this.db
            .select({ one: sql`1` })
            .from(blocks)
            .where(
              or(
                and(eq(blocks.userId, watcher), eq(blocks.blockedUserId, theirs.userId)),
                and(eq(blocks.userId, theirs.userId), eq(blocks.blockedUserId, watcher)),
              ),
            )})`,
        ),
      );
    for (const { userId } of rows) visible.add(userId);
    return visible;
  }
}
