import { eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { erasures } from "../db/schema.ts";

/** Fenced ids a node remembers at most; past it the oldest go (their accounts are long erased). */
const MAX_FENCED = 100_000;

/**
 * The erasure fence of one node (issue 12): the users whose erasure has started. Nothing may be
 * sent to or from them, no group may take them, their keys are not handed out, they cannot sign in,
 * and no actor, drain, presence write or queue declaration may create a store entry for them.
 *
 * The durable mark is the `erasures` row of the pending job (`user_id`, `status = 'pending'`),
 * written before anything is swept; every node loads the marks when it starts (`load`, before its
 * listeners open) and the erasure job tells every ring member (`FenceLink`) before its first sweep.
 * An id stays fenced in this node's memory after its erasure is done (the account and its rows
 * are gone by then; the id in memory names nobody) until the node restarts, so a late deliver,
 * flush or ack for it still finds the fence. Held in memory only: no store keeps the id.
 */
export class ErasureFence {
  private readonly fenced = new Set<string>();

  /** True once the user's erasure has started (or finished since this node started). */
  has(userId: string): boolean {
    return this.fenced.size > 0 && this.fenced.has(userId);
  }

  /** Fences a user on this node; true when it was not fenced yet. */
  add(userId: string): boolean {
    if (this.fenced.has(userId)) return false;
    this.fenced.add(userId);
    // Sets iterate in insertion order: the first entries are the oldest.
    for (const id of this.fenced) {
      if (this.fenced.size <= MAX_FENCED) break;
      this.fenced.delete(id);
    }
    return true;
  }

  /** Fences every user whose erasure is pending in the database; returns how many. */
  async load(db: Db): Promise<number> {
    const rows = await db
      .select({ userId: erasures.userId })
      .from(erasures)
      .where(eq(erasures.status, "pending"));
    for (const { userId } of rows) if (userId) this.add(userId);
    return rows.length;
  }
}
