import { and, asc, count, eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { accounts, blocks, groupInvitations } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { lockBlocker, lockInvitees } from "../groups/invitee-lock.ts";
import { type RateLimiter, type RateLimitRule, spendDeviceThenAccount } from "../ratelimit/index.ts";
import type { Principal } from "../sessions/service.ts";
import { BLOCK_CHANGE_ACCOUNT_LIMIT, BLOCK_CHANGE_LIMIT, MAX_BLOCKS } from "./model.ts";

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

  constructor(
    private readonly db: Db,
    /** Counts block changes against `rules` (the node's limiter: Redis, shared by every node). */
    private readonly limiter: RateLimiter,
    private readonly rules: { device: RateLimitRule; account: RateLimitRule } = {
      device: BLOCK_CHANGE_LIMIT,
      account: BLOCK_CHANGE_ACCOUNT_LIMIT,
    },
  ) {}

  /** Registers a listener for block changes made on this node. */
  onChanged(listener: BlockListener): void {
    this.listeners.push(listener);
  }

  private async changed(blocker: string, blocked: string): Promise<void> {
    for (const listener of this.listeners) await listener(blocker, blocked);
  }

  /**
   * Spends one block change of the device's budget, then one of its account's (`rules`);
   * `rate_limited` with `retryAfterSeconds` when either is spent. A device refused spends nothing of
   * its account's budget. Before any read or write: a refused change costs one limiter round trip.
   */
  private async spend(who: Principal): Promise<void> {
    await spendDeviceThenAccount(this.limiter, this.rules, who, "too many block changes, retry later");
  }

  /**
   * `who`'s account blocks `target`: idempotent; pending invitations from `target` to it are dropped.
   * `invalid` for oneself, `rate_limited` past the block-change budgets (`spend`), `not_found` for
   * an unknown user, `conflict` past MAX_BLOCKS (counted under the user's block lock, so concurrent
   * blocks cannot pass it). Nothing is written when it throws.
   */
  async block(who: Principal, target: string): Promise<void> {
    const userId = who.userId;
    if (userId === target) throw new DomainError("invalid", "userId: you cannot block yourself");
    await this.spend(who);
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

  /**
   * `who`'s account lifts its block of `target`; idempotent (204 whether or not there was one).
   * `rate_limited` past the block-change budgets (`spend`), changing nothing.
   */
  async unblock(who: Principal, target: string): Promise<void> {
    const userId = who.userId;
    await this.spend(who);
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
