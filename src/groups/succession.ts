import { and, asc, eq, inArray } from "drizzle-orm";
import type { Tx } from "../db/index.ts";
import { groupMembers, groups } from "../db/schema.ts";

export type { Tx };

/** What `keepAnAdmin` did to one group. */
export type Succession =
  | { groupId: string; outcome: "kept" }
  | { groupId: string; outcome: "promoted"; userId: string }
  | { groupId: string; outcome: "deleted" };

/**
 * Locks the groups' rows (`SELECT … FOR UPDATE`) for the rest of the transaction, so two members
 * leaving at once cannot both see the other as the remaining admin.
 */
export async function lockGroups(tx: Tx, groupIds: string[]): Promise<void> {
  if (groupIds.length === 0) return;
  // In id order, so two transactions locking overlapping sets cannot deadlock.
  await tx
    .select({ id: groups.id })
    .from(groups)
    .where(inArray(groups.id, groupIds))
    .orderBy(asc(groups.id))
    .for("update");
}

/**
 * A group never loses its last admin (issue 13 item 11): after a member left, was removed or was
 * erased, a group with members and no admin gets its longest-standing member (earliest `added_at`,
 * i.e. when they joined or accepted the invitation; ties by user id) as admin, and a group with no
 * member left is deleted (its pending invitations go with it by cascade). Call inside the
 * transaction that removed the member, after `lockGroups`.
 */
export async function keepAnAdmin(tx: Tx, groupId: string): Promise<Succession> {
  const members = await tx
    .select({ userId: groupMembers.userId, role: groupMembers.role })
    .from(groupMembers)
    .where(eq(groupMembers.groupId, groupId))
    .orderBy(asc(groupMembers.addedAt), asc(groupMembers.userId));
  if (members.length === 0) {
    await tx.delete(groups).where(eq(groups.id, groupId));
    return { groupId, outcome: "deleted" };
  }
  if (members.some((m) => m.role === "admin")) return { groupId, outcome: "kept" };
  const [heir] = members;
  await tx
    .update(groupMembers)
    .set({ role: "admin" })
    .where(and(eq(groupMembers.groupId, groupId), eq(groupMembers.userId, heir.userId)));
  return { groupId, outcome: "promoted", userId: heir.userId };
}
