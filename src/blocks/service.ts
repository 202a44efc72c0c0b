import { and, asc, count, eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { accounts, blocks, groupInvitations } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { lockBlocker, lockInvitees } from "../groups/invitee-lock.ts";
import { MAX_BLOCKS } from "./model.ts";

/** One entry of a user's block list (`GET /v1/blocks`). */
export interface BlockEntry {
  userId: string;
  /** Unix ms. */
  blockedAt: number;
}

/** Told after a block is made or lifted; the change's reply waits for what it returns. */
export type BlockListener = (blocker: string, blocked: string) => Promise<void> | void;

/**
 * Blocks (issue 13 item 7): a blocked user cannot message the blocker (1:1 sends are answered
 * `accepted` and dropped, group messages skip the blocker's devices), cannot invite them to a group
 * (dropped silently) and cannot see their presence (nor the blocker theirs: presence needs a relation,
 * `groups/relations.ts`). Nothing tells the blocked user they are blocked; see docs/PROTOCOL.md,
 * "Groups, invitations and blocks".
 */
export class BlockService {
  private readonly listeners: BlockListener[] = [];

  constructor(private readonly db: Db) {}

  /** Registers a listener for block changes made on this node. */
  onChanged(listener: BlockListener): void {
    this.listeners.push(listener);
  }

  private async changed(blocker: string, blocked: string): Promise<void> {
    for (const listener of this.listeners) await listener(blocker, blocked);
  }

  /**
   * `userId` blocks `target`: idempotent; pending invitations from `target` to `userId` are dropped.
   * `invalid` for oneself, `not_found` for an unknown user, `conflict` past MAX_BLOCKS (counted under
   * the user's block lock, so concurrent blocks cannot pass it; nothing is written then).
   */
  async block(userId: string, target: string): Promise<void> {
    if (userId === target) throw new DomainError("invalid", "userId: you cannot block yourself");
    const [account] = await this.db.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, target));
    if (!account) throw new DomainError("not_found", "no such user");
    await this.db.transaction(async (tx) => {
      // The count below holds until commit: this user's other blocks wait here.
      await lockBlocker(tx, userId);
      const [{ n }] = await tx.select({ n: count() }).from(blocks).where(eq(blocks.userId, userId));
      const inserted = await tx
        .insert(blocks)
        .values({ userId, blockedUserId: target })
        .onConflictDoNothing()
        .returning({ userId: blocks.userId });
      if (inserted.length > 0 && n >= MAX_BLOCKS)
        throw new DomainError("conflict", `an account blocks at most ${MAX_BLOCKS} users`);
      // Invitations to this user wait (or are waited for): one from `target` in flight reads this
      // block once it may, or is written before and deleted below.
      await lockInvitees(tx, [userId]);
      await tx
        .delete(groupInvitations)
        .where(and(eq(groupInvitations.userId, userId), eq(groupInvitations.invitedBy, target)));
    });
    await this.changed(userId, target);
  }

  /** Lifts a block; idempotent (204 whether or not there was one). */
  async unblock(userId: string, target: string): Promise<void> {
    await this.db.delete(blocks).where(and(eq(blocks.userId, userId), eq(blocks.blockedUserId, target)));
    await this.changed(userId, target);
  }

  /** The users `userId` blocks, oldest block first. */
  async list(userId: string): Promise<BlockEntry[]> {
    const rows = await this.db
      .select({ userId: blocks.blockedUserId, createdAt: blocks.createdAt })
      .from(blocks)
      .where(eq(blocks.userId, userId))
      .orderBy(asc(blocks.createdAt), asc(blocks.blockedUserId));
    return rows.map((r) => ({ userId: r.userId, blockedAt: r.createdAt.getTime() }));
  }
}
