import { sql } from "drizzle-orm";
import type { Tx } from "../db/index.ts";

/**
 * Advisory lock class (the two-key form of `pg_advisory_xact_lock`, PostgreSQL manual, "Advisory
 * Lock Functions") under which invitations to a user are serialised: their caps count the
 * invitee's pending invitations, and two transactions counting at once would each see room for one.
 * A block takes its blocker's lock too, so an invitation and a block of its inviter by its invitee
 * see each other (src/blocks/service.ts).
 */
const INVITEE_LOCK_CLASS = 0x696e_7669; // "invi"

/** Invitees share this many locks (by user id): a creation inviting 9,999 takes at most this many. */
const INVITEE_LOCK_BUCKETS = 256;

/** The lock bucket of a user id (a server-made UUID: its first 32 bits are random). */
function inviteeBucket(userId: string): number {
  return Number.parseInt(userId.slice(0, 8), 16) % INVITEE_LOCK_BUCKETS;
}

/**
 * Serialises invitations to these users (user ids) until `tx` ends. The buckets are taken in
 * ascending order in one statement, so two transactions taking several never wait on each other
 * in a cycle; a caller holding other locks takes these last (after group rows, account rows, the
 * block lock).
 */
export async function lockInvitees(tx: Tx, invitees: readonly string[]): Promise<void> {
  const buckets = [...new Set(invitees.map(inviteeBucket))].sort((a, b) => a - b);
  await tx.execute(
    sql`select pg_advisory_xact_lock(${sql.raw(String(INVITEE_LOCK_CLASS))}, b)
      from unnest(${sql.raw(`'{${buckets.join(",")}}'`)}::int[]) as b`,
  );
}
