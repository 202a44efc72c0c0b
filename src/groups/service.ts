import { and, asc, count, eq, inArray } from "drizzle-orm";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import type { Db } from "../db/index.ts";
import { accounts, groupMembers, groups } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { MAX_GROUP_MEMBERS } from "./model.ts";
import { keepAnAdmin, lockGroups, type Succession } from "./succession.ts";

export interface GroupInfo {
  groupId: string;
  name: string;
  members: string[];
  admins: string[];
}

/** Groups: creation, membership and admin roles, kept in PostgreSQL. */
export class GroupService {
  constructor(
    private readonly db: Db,
    private readonly audit?: AuditTrail,
  ) {}

  /** Audits membership changes in one append when the trail can batch (a new group may have 10,000 members). */
  private async audited(events: AuditEvent[]) {
    if (this.audit?.recordAll) await this.audit.recordAll(events);
    else for (const event of events) await this.audit?.record(event);
  }

  private async assertUsersExist(userIds: string[]) {
    if (userIds.length === 0) return;
    const found = await this.db
      .select({ id: accounts.id })
      .from(accounts)
      .where(inArray(accounts.id, userIds));
    if (found.length !== userIds.length) {
      const known = new Set(found.map((r) => r.id));
      const missing = userIds.filter((id) => !known.has(id));
      throw new DomainError("not_found", `no such user: ${missing.slice(0, 5).join(", ")}`);
    }
  }

  /** Creates a group; the creator becomes its admin and a member. */
  async create(creator: string, name: string, members: string[]): Promise<string> {
    const others = [...new Set(members.filter((m) => m !== creator))];
    await this.assertUsersExist(others);
    const groupId = await this.db.transaction(async (tx) => {
      const [group] = await tx.insert(groups).values({ name }).returning({ id: groups.id });
      await tx
        .insert(groupMembers)
        .values([
          { groupId: group.id, userId: creator, role: "admin" },
          ...others.map((userId) => ({ groupId: group.id, userId, role: "member" as const })),
        ]);
      return group.id;
    });
    const actor = { user: creator };
    await this.audited([
      { action: "group.create", actor, subject: creator, details: { groupId } },
      ...others.map((member) => ({
        action: "group.member.add",
        actor,
        subject: member,
        details: { groupId },
      })),
    ]);
    return groupId;
  }

  /** The group as a member sees it; `not_found` when it does not exist, `forbidden` for non-members. */
  async get(groupId: string, caller: string): Promise<GroupInfo> {
    const [group] = await this.db.select().from(groups).where(eq(groups.id, groupId));
    if (!group) throw new DomainError("not_found", "no such group");
    const rows = await this.membersOf(groupId);
    if (!rows.some((r) => r.userId === caller))
      throw new DomainError("forbidden", "you are not a member of this group");
    return {
      groupId,
      name: group.name,
      members: rows.map((r) => r.userId),
      admins: rows.filter((r) => r.role === "admin").map((r) => r.userId),
    };
  }

  /** Members and their roles, oldest first. */
  membersOf(groupId: string) {
    return this.db
      .select({ userId: groupMembers.userId, role: groupMembers.role })
      .from(groupMembers)
      .where(eq(groupMembers.groupId, groupId))
      .orderBy(asc(groupMembers.addedAt), asc(groupMembers.userId));
  }

  private async roleOf(groupId: string, userId: string) {
    const [group] = await this.db.select({ id: groups.id }).from(groups).where(eq(groups.id, groupId));
    if (!group) throw new DomainError("not_found", "no such group");
    const [row] = await this.db
      .select({ role: groupMembers.role })
      .from(groupMembers)
      .where(and(eq(groupMembers.groupId, groupId), eq(groupMembers.userId, userId)));
    return row?.role;
  }

  /** Adds a member; only admins may. Adding a current member changes nothing. */
  async addMember(groupId: string, caller: string, userId: string): Promise<void> {
    if ((await this.roleOf(groupId, caller)) !== "admin") {
      throw new DomainError("forbidden", "only a group admin can add members");
    }
    await this.assertUsersExist([userId]);
    const [{ n }] = await this.db
      .select({ n: count() })
      .from(groupMembers)
      .where(eq(groupMembers.groupId, groupId));
    if (n >= MAX_GROUP_MEMBERS)
      throw new DomainError("conflict", `a group has at most ${MAX_GROUP_MEMBERS} members`);
    const added = await this.db
      .insert(groupMembers)
      .values({ groupId, userId, role: "member" })
      .onConflictDoNothing()
      .returning({ userId: groupMembers.userId });
    if (added.length === 0) return;
    await this.audited([
      { action: "group.member.add", actor: { user: caller }, subject: userId, details: { groupId } },
    ]);
  }

  /**
   * Removes a member; admins may remove anyone, anyone may leave. When the last admin goes, the
   * longest-standing member becomes admin; when the last member goes, the group is deleted
   * (`keepAnAdmin`). `not_found` when the user is not a member.
   */
  async removeMember(groupId: string, caller: string, userId: string): Promise<void> {
    const callerRole = await this.roleOf(groupId, caller);
    if (caller !== userId && callerRole !== "admin") {
      throw new DomainError("forbidden", "only a group admin can remove other members");
    }
    const succession = await this.db.transaction(async (tx) => {
      await lockGroups(tx, [groupId]);
      const removed = await tx
        .delete(groupMembers)
        .where(and(eq(groupMembers.groupId, groupId), eq(groupMembers.userId, userId)))
        .returning({ userId: groupMembers.userId });
      if (removed.length === 0) throw new DomainError("not_found", "not a member of this group");
      return keepAnAdmin(tx, groupId);
    });
    await this.audited([
      { action: "group.member.remove", actor: { user: caller }, subject: userId, details: { groupId } },
      ...successionEvents([succession]),
    ]);
  }
}

/** The audit entries of what `keepAnAdmin` did (nothing when the group kept an admin). */
export function successionEvents(successions: Succession[]): AuditEvent[] {
  const events: AuditEvent[] = [];
  for (const s of successions) {
    if (s.outcome === "promoted")
      events.push({
        action: "group.admin.promote",
        actor: "system",
        subject: s.userId,
        details: { groupId: s.groupId, reason: "last admin left" },
      });
    else if (s.outcome === "deleted")
      events.push({
        action: "group.delete",
        actor: "system",
        details: { groupId: s.groupId, reason: "empty" },
      });
  }
  return events;
}
