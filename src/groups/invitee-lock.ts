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

/**
 * Advisory lock class under which one user's blocks are serialised: MAX_BLOCKS is counted and then
 * a block inserted, and two transactions counting at once would each see room for one. Not the
 * account's row: an `accept` holds an invitation row of the user and then locks that row, and a
 * block deletes invitations, so the two would deadlock (src/blocks/service.ts).
 */
const BLOCKER_LOCK_CLASS = 0x626c_6f6b; // "blok"

/** The first 32 bits of a user id (a server-made UUID: they are random), as a non-negative number. */
function idBits(userId: string): number {
  return Number.parseInt(userId.slice(0, 8), 16);
}

/** The lock bucket of a user id. */
function inviteeBucket(userId: string): number {
  return idBits(userId) % INVITEE_LOCK_BUCKETS;
}

/**
 * Serialises `userId`'s blocks until `tx` ends (its own lock, as a signed int4 key). Taken before
 * the invitee locks (`lockInvitees`), which a block takes last.
 */
export async function lockBlocker(tx: Tx, userId: string): Promise<void> {
  await tx.execute(
    sql`select pg_advisory_xact_lock(${sql.raw(String(BLOCKER_LOCK_CLASS))}, ${sql.raw(String(idBits(userId) | 0))})`,
  );
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
