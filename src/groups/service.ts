import { and, asc, count, eq, inArray, sql } from "drizzle-orm";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import { pgErrorCode } from "../db/errors.ts";
import type { Db } from "../db/index.ts";
import { accounts, blocks, groupInvitations, groupMembers, groups } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import { type RateLimiter, type RateLimitRule, spendDeviceThenAccount } from "../ratelimit/index.ts";
import { lockInvitees } from "./invitee-lock.ts";
import {
  GROUP_CHANGE_ACCOUNT_LIMIT,
  GROUP_CHANGE_LIMIT,
  MAX_GROUP_MEMBERS,
  MAX_GROUPS_PER_USER,
  MAX_PENDING_INVITATIONS,
  MAX_PENDING_INVITATIONS_PER_INVITER,
} from "./model.ts";
import { keepAnAdmin, lockGroups, type Succession, type Tx } from "./succession.ts";

/** PostgreSQL's SQLSTATE for a foreign key violation. */
const FOREIGN_KEY_VIOLATION = "23503";

/** The refusal of a caller whose erasure has started (as `SessionService` words it). */
const ERASED = "account erased";

export interface GroupInfo {
  groupId: string;
  name: string;
  /** Members who accepted (or created the group); pending invitees are never listed. */
  members: string[];
  admins: string[];
}

/** A pending invitation as the invitee sees it (`GET /v1/invitations`). */
export interface Invitation {
  groupId: string;
  name: string;
  invitedBy: string;
  /** Unix ms. */
  invitedAt: number;
}

/**
 * Groups: creation, consent-based membership (invitations the invitee accepts or declines) and
 * admin roles, kept in PostgreSQL. A pending invitee is not a member: no group messages, not listed
 * to members, not in the fan-out, unrelated for presence. An invitation to someone who blocked the
 * inviter is dropped silently (the inviter sees the same answer as for any invitation not yet
 * accepted).
 */
export class GroupService {
  private readonly listeners: ((users: string[]) => void)[] = [];

  constructor(
    private readonly db: Db,
    private readonly audit?: AuditTrail,
    /** Users whose erasure has started: no group takes them (as if they did not exist). */
    private readonly erasing?: ErasureFence,
    /** Counts group changes against `changeRules` (the node's limiter: Redis, shared by every node). */
    private readonly limiter?: RateLimiter,
    private readonly changeRules: { device: RateLimitRule; account: RateLimitRule } = {
      device: GROUP_CHANGE_LIMIT,
      account: GROUP_CHANGE_ACCOUNT_LIMIT,
    },
  ) {}

  /**
   * Spends one group change of the device's budget, then one of its account's (`changeRules`);
   * throws `rate_limited` (HTTP 429 with `Retry-After`) when either is spent, and a device refused
   * spends nothing of its account's. The routes call it before every create, member change, leave,
   * accept and decline, once their input has passed its schema; without a limiter it spends nothing.
   */
  async spendChange(who: { userId: string; deviceId: number }): Promise<void> {
    if (!this.limiter) return;
    await spendDeviceThenAccount(this.limiter, this.changeRules, who, "too many group changes, retry later");
  }

  /**
   * Registers a listener told, after the change, of users whose memberships changed on this node
   * (accepted an invitation, left or were removed): whose presence they share may have changed.
   */
  onMembershipChanged(listener: (users: string[]) => void): void {
    this.listeners.push(listener);
  }

  private membershipChanged(users: string[]): void {
    for (const listener of this.listeners) listener(users);
  }

  /**
   * Audits a change inside its own transaction `tx`, as its last step (`AuditTrail.recordIn`): the
   * entries commit with the change or not at all, so a node that dies after the commit leaves no
   * change unaudited. Returns the events a trail without `recordIn` could not take, for `audited`
   * after the commit.
   */
  private async auditIn(tx: Tx, events: AuditEvent[]): Promise<AuditEvent[]> {
    if (events.length === 0 || !this.audit) return [];
    if (!this.audit.recordIn) return events;
    await this.audit.recordIn(tx, events);
    return [];
  }

  /** After the commit (a trail without `recordIn`): in one append when the trail can batch (a new group may invite 9,999). */
  private async audited(events: AuditEvent[]) {
    if (events.length === 0) return;
    if (this.audit?.recordAll) await this.audit.recordAll(events);
    else for (const event of events) await this.audit?.record(event);
  }

  /** `unauthorized` ("account erased", as sessions answer) when the caller's erasure has started. */
  private refuseErased(userId: string): void {
    if (this.erasing?.has(userId)) throw new DomainError("unauthorized", ERASED);
  }

  private async assertUsersExist(userIds: string[]) {
    if (userIds.length === 0) return;
    const found = await this.db
      .select({ id: accounts.id })
      .from(accounts)
      .where(inArray(accounts.id, userIds));
    const live = found.filter((r) => !this.erasing?.has(r.id));
    if (live.length !== userIds.length) {
      const known = new Set(live.map((r) => r.id));
      const missing = userIds.filter((id) => !known.has(id));
      throw new DomainError("not_found", `no such user: ${missing.slice(0, 5).join(", ")}`);
    }
  }

  /**
   * Refuses with `conflict` when `userId` is already a member of MAX_GROUPS_PER_USER groups. Locks
   * the account's row first (inside `tx`), so two creations or acceptances at once cannot both pass,
   * and an erasure of the user (which takes the row the same way before it reads their memberships)
   * sees the membership this transaction writes, or comes first: then `unauthorized` ("account
   * erased"), nothing written.
   */
  private async assertRoomForAnotherGroup(tx: Tx, userId: string): Promise<void> {
    // NO KEY UPDATE: serialises this user's creations and joins, and still lets another transaction
    // insert an invitation naming them (its foreign key check takes KEY SHARE on this row) while
    // it holds their invitee lock, which this transaction may wait for next (`lockInvitees`).
    const [account] = await tx
      .select({ id: accounts.id })
      .from(accounts)
      .where(eq(accounts.id, userId))
      .for("no key update");
    // Erased while this call ran (it waited for the erasure's lock on the row): nothing is written.
    if (!account) throw new DomainError("unauthorized", ERASED);
    const [{ n }] = await tx.select({ n: count() }).from(groupMembers).where(eq(groupMembers.userId, userId));
    if (n >= MAX_GROUPS_PER_USER) {
      throw new DomainError(
        "conflict",
        `an account is a member of at most ${MAX_GROUPS_PER_USER.toLocaleString("en")} groups; leave one first`,
      );
    }
  }

  /**
   * Invites `invitees` to `groupId` on behalf of `inviter`, inside `tx` (the group locked): skips
   * members, users already invited and users who blocked the inviter, and refuses with `conflict`
   * when members and invitations would pass MAX_GROUP_MEMBERS, an invitee would hold more than
   * MAX_PENDING_INVITATIONS, or more than MAX_PENDING_INVITATIONS_PER_INVITER from `inviter`, and
   * with `not_found` when an invitee was erased since it was checked (nothing written).
   * Returns who was invited.
   */
  private async invite(tx: Tx, groupId: string, inviter: string, invitees: string[]): Promise<string[]> {
    if (invitees.length === 0) return [];
    const present = await tx
      .select({ userId: groupMembers.userId })
      .from(groupMembers)
      .where(and(eq(groupMembers.groupId, groupId), inArray(groupMembers.userId, invitees)));
    const invited = await tx
      .select({ userId: groupInvitations.userId })
      .from(groupInvitations)
      .where(and(eq(groupInvitations.groupId, groupId), inArray(groupInvitations.userId, invitees)));
    const skip = new Set([...present, ...invited].map((r) => r.userId));
    const named = invitees.filter((u) => !skip.has(u));
    if (named.length === 0) return [];
    // The caps below hold under concurrent invitations (from other groups, which their own group
    // locks do not exclude).
    await lockInvitees(tx, named);
    // Blocks are read under the invitees' locks, which a block takes too (`lockInvitees` of the
    // blocker): read before, a block committed meanwhile deleted no invitation (this one was not
    // written yet) and this one was written after it, an invitation from someone the invitee blocks.
    const blockers = await tx
      .select({ userId: blocks.userId })
      .from(blocks)
      .where(and(eq(blocks.blockedUserId, inviter), inArray(blocks.userId, named)));
    const blocking = new Set(blockers.map((r) => r.userId));
    const fresh = named.filter((u) => !blocking.has(u));
    if (fresh.length === 0) return [];
    const [{ members }] = await tx
      .select({ members: count() })
      .from(groupMembers)
      .where(eq(groupMembers.groupId, groupId));
    const [{ pending }] = await tx
      .select({ pending: count() })
      .from(groupInvitations)
      .where(eq(groupInvitations.groupId, groupId));
    const n = members + pending;
    if (n + fresh.length > MAX_GROUP_MEMBERS)
      throw new DomainError(
        "conflict",
        `a group has at most ${MAX_GROUP_MEMBERS} members and pending invitations together`,
      );
    const crowded = await tx
      .select({ userId: groupInvitations.userId, n: count() })
      .from(groupInvitations)
      .where(inArray(groupInvitations.userId, fresh))
      .groupBy(groupInvitations.userId)
      .having(sql`count(*) >= ${MAX_PENDING_INVITATIONS}`);
    if (crowded.length > 0)
      throw new DomainError(
        "conflict",
        `a user holds at most ${MAX_PENDING_INVITATIONS} pending invitations; they must accept or decline some first`,
      );
    const repeated = await tx
      .select({ userId: groupInvitations.userId })
      .from(groupInvitations)
      .where(and(eq(groupInvitations.invitedBy, inviter), inArray(groupInvitations.userId, fresh)))
      .groupBy(groupInvitations.userId)
      .having(sql`count(*) >= ${MAX_PENDING_INVITATIONS_PER_INVITER}`);
    if (repeated.length > 0)
      throw new DomainError(
        "conflict",
        `a user holds at most ${MAX_PENDING_INVITATIONS_PER_INVITER} pending invitations from the same inviter; wait until they accept or decline yours`,
      );
    try {
      await tx
        .insert(groupInvitations)
        .values(fresh.map((userId) => ({ groupId, userId, invitedBy: inviter })))
        .onConflictDoNothing();
    } catch (error) {
      // An invitee erased since `assertUsersExist` (its account's row is gone): as if unknown.
      if (pgErrorCode(error) === FOREIGN_KEY_VIOLATION) throw new DomainError("not_found", "no such user");
      throw error;
    }
    return fresh;
  }

  /**
   * Creates a group; the creator becomes its admin and only member, and every user of `members` is
   * invited (docs/PROTOCOL.md, invitations). `not_found` when one of them does not exist, `conflict`
   * when the creator is a member of MAX_GROUPS_PER_USER groups already or past the limits of `invite`,
   * `unauthorized` ("account erased") once the creator's erasure has started.
   */
  async create(creator: string, name: string, members: string[]): Promise<string> {
    this.refuseErased(creator);
    const others = [...new Set(members.filter((m) => m !== creator))];
    await this.assertUsersExist(others);
    const { groupId, unaudited } = await this.db.transaction(async (tx) => {
      await this.assertRoomForAnotherGroup(tx, creator);
      const [group] = await tx.insert(groups).values({ name }).returning({ id: groups.id });
      await tx.insert(groupMembers).values({ groupId: group.id, userId: creator, role: "admin" });
      const invited = await this.invite(tx, group.id, creator, others);
      const actor = { user: creator };
      const details = { groupId: group.id };
      const events: AuditEvent[] = [
        { action: "group.create", actor, subject: creator, details },
        ...invited.map((invitee) => ({ action: "group.member.invite", actor, subject: invitee, details })),
      ];
      return { groupId: group.id, unaudited: await this.auditIn(tx, events) };
    });
    await this.audited(unaudited);
    return groupId;
  }

  /** The group as a member sees it; `not_found` when it does not exist, `forbidden` for non-members (invitees included). */
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

  /**
   * `userId`'s role in the group (undefined: not a member); `not_found` when the group does not
   * exist. Read through `db` (a transaction holding the group's lock, `lockGroups`, to decide on a
   * change: a role read before the lock may be gone by the time the change is written).
   */
  private async roleOf(groupId: string, userId: string, db: Pick<Db, "select"> = this.db) {
    const [group] = await db.select({ id: groups.id }).from(groups).where(eq(groups.id, groupId));
    if (!group) throw new DomainError("not_found", "no such group");
    const [row] = await db
      .select({ role: groupMembers.role })
      .from(groupMembers)
      .where(and(eq(groupMembers.groupId, groupId), eq(groupMembers.userId, userId)));
    return row?.role;
  }

  /**
   * Invites a user to the group; only admins may. Inviting a member or someone already invited
   * changes nothing; so does inviting someone who blocked the caller (silently: the answer is the
   * same). `not_found` for an unknown user or group, `conflict` past the limits of `invite`,
   * `forbidden` when the caller is not an admin, checked again under the group's lock (an admin who
   * left or was removed while the call ran invites nobody).
   */
  async addMember(groupId: string, caller: string, userId: string): Promise<void> {
    if ((await this.roleOf(groupId, caller)) !== "admin") {
      throw new DomainError("forbidden", "only a group admin can invite members");
    }
    await this.assertUsersExist([userId]);
    const unaudited = await this.db.transaction(async (tx) => {
      await lockGroups(tx, [groupId]);
      // Again under the group's lock: the caller may have left or been removed since the check
      // above (their other device, another admin), and must not invite as a non-member.
      if ((await this.roleOf(groupId, caller, tx)) !== "admin") {
        throw new DomainError("forbidden", "only a group admin can invite members");
      }
      const invited = await this.invite(tx, groupId, caller, [userId]);
      return this.auditIn(
        tx,
        invited.map((invitee) => ({
          action: "group.member.invite",
          actor: { user: caller },
          subject: invitee,
          details: { groupId },
        })),
      );
    });
    await this.audited(unaudited);
  }

  /** The caller's pending invitations, oldest first. */
  async invitations(userId: string): Promise<Invitation[]> {
    const rows = await this.db
      .select({
        groupId: groupInvitations.groupId,
        name: groups.name,
        invitedBy: groupInvitations.invitedBy,
        invitedAt: groupInvitations.invitedAt,
      })
      .from(groupInvitations)
      .innerJoin(groups, eq(groups.id, groupInvitations.groupId))
      .where(eq(groupInvitations.userId, userId))
      .orderBy(asc(groupInvitations.invitedAt), asc(groupInvitations.groupId));
    return rows.map((r) => ({ ...r, invitedAt: r.invitedAt.getTime() }));
  }

  /**
   * Accepts an invitation: the caller becomes a member (joined now, for admin succession).
   * `not_found` when there is no such invitation, `conflict` when the group is full or the caller
   * is a member of MAX_GROUPS_PER_USER groups already (the invitation stays), `unauthorized`
   * ("account erased") once the caller's erasure has started.
   */
  async accept(groupId: string, userId: string): Promise<void> {
    this.refuseErased(userId);
    const unaudited = await this.db.transaction(async (tx) => {
      await lockGroups(tx, [groupId]);
      const taken = await tx
        .delete(groupInvitations)
        .where(and(eq(groupInvitations.groupId, groupId), eq(groupInvitations.userId, userId)))
        .returning({ userId: groupInvitations.userId });
      if (taken.length === 0) throw new DomainError("not_found", "no invitation to this group");
      const [{ n }] = await tx
        .select({ n: count() })
        .from(groupMembers)
        .where(eq(groupMembers.groupId, groupId));
      if (n >= MAX_GROUP_MEMBERS)
        throw new DomainError("conflict", `a group has at most ${MAX_GROUP_MEMBERS} members`);
      await this.assertRoomForAnotherGroup(tx, userId);
      await tx.insert(groupMembers).values({ groupId, userId, role: "member" }).onConflictDoNothing();
      return this.auditIn(tx, [
        { action: "group.member.join", actor: { user: userId }, subject: userId, details: { groupId } },
      ]);
    });
    this.membershipChanged([userId]);
    await this.audited(unaudited);
  }

  /** Declines an invitation; `not_found` when there is no such invitation. */
  async decline(groupId: string, userId: string): Promise<void> {
    const unaudited = await this.db.transaction(async (tx) => {
      const removed = await tx
        .delete(groupInvitations)
        .where(and(eq(groupInvitations.groupId, groupId), eq(groupInvitations.userId, userId)))
        .returning({ userId: groupInvitations.userId });
      if (removed.length === 0) throw new DomainError("not_found", "no invitation to this group");
      return this.auditIn(tx, [
        {
          action: "group.invitation.decline",
          actor: { user: userId },
          subject: userId,
          details: { groupId },
        },
      ]);
    });
    await this.audited(unaudited);
  }

  /**
   * Removes a member or withdraws a pending invitation; admins may remove anyone, anyone may leave
   * (or decline). When the last admin goes, the longest-standing member becomes admin; when the
   * last member goes, the group is deleted (`keepAnAdmin`). `not_found` when the user is neither a
   * member nor invited; `forbidden` when the caller removes someone else without being an admin,
   * checked again under the group's lock (an admin removed while the call ran removes nobody).
   */
  async removeMember(groupId: string, caller: string, userId: string): Promise<void> {
    const callerRole = await this.roleOf(groupId, caller);
    if (caller !== userId && callerRole !== "admin") {
      throw new DomainError("forbidden", "only a group admin can remove other members");
    }
    const outcome = await this.db.transaction(async (tx) => {
      await lockGroups(tx, [groupId]);
      // Again under the group's lock: an admin removed meanwhile removes nobody.
      if (caller !== userId && (await this.roleOf(groupId, caller, tx)) !== "admin") {
        throw new DomainError("forbidden", "only a group admin can remove other members");
      }
      const actor = { user: caller };
      const removed = await tx
        .delete(groupMembers)
        .where(and(eq(groupMembers.groupId, groupId), eq(groupMembers.userId, userId)))
        .returning({ userId: groupMembers.userId });
      if (removed.length > 0) {
        const succession = await keepAnAdmin(tx, groupId);
        const unaudited = await this.auditIn(tx, [
          { action: "group.member.remove", actor, subject: userId, details: { groupId } },
          ...successionEvents([succession]),
        ]);
        return { membershipChanged: true, unaudited };
      }
      const withdrawn = await tx
        .delete(groupInvitations)
        .where(and(eq(groupInvitations.groupId, groupId), eq(groupInvitations.userId, userId)))
        .returning({ userId: groupInvitations.userId });
      if (withdrawn.length === 0) throw new DomainError("not_found", "not a member of this group");
      const unaudited = await this.auditIn(tx, [
        { action: "group.invitation.withdraw", actor, subject: userId, details: { groupId } },
      ]);
      return { membershipChanged: false, unaudited };
    });
    if (outcome.membershipChanged) this.membershipChanged([userId]);
    await this.audited(outcome.unaudited);
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
