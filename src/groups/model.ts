import { t } from "elysia";
import { DisplayName, Uuid } from "../protocol/ids.ts";
import type { RateLimitRule } from "../ratelimit/index.ts";

/** Largest group: the fan-out benchmark's 10,000 members. */
export const MAX_GROUP_MEMBERS = 10_000;

/** Pending invitations one user may hold at most: an inviter cannot flood someone's list. */
export const MAX_PENDING_INVITATIONS = 1_000;

/**
 * Pending invitations one user may hold from the same inviter: without it one account with a
 * thousand groups filled someone's MAX_PENDING_INVITATIONS, after which nobody could invite them.
 */
export const MAX_PENDING_INVITATIONS_PER_INVITER = 20;

/**
 * Groups one user may be a member of at most, made or joined: what an account can make the server
 * store through `POST /v1/groups` is bounded (a loop on it otherwise grew the database without end).
 */
export const MAX_GROUPS_PER_USER = 1_000;

/**
 * Group changes (`POST /v1/groups`, adding or removing a member or leaving, accepting or declining
 * an invitation; refused ones included) one device may make per minute. Each is a transaction that
 * appends to the audit chain under its cluster-wide lock (src/audit/service.ts, CHAIN_LOCK), so an
 * unbudgeted loop of joins and leaves held every node's audited writes behind it and grew the audit
 * log without end. 300 a minute leaves room for a client replaying a list of invitations. Like the
 * block budgets (src/blocks/model.ts), per device and per account.
 */
export const GROUP_CHANGE_LIMIT = {
  name: "groups.change",
  limit: 300,
  windowMs: 60_000,
} satisfies RateLimitRule;

/** Group changes all the devices of one account may make per minute together: four devices' worth. */
export const GROUP_CHANGE_ACCOUNT_LIMIT = {
  name: "groups.change.account",
  limit: 4 * GROUP_CHANGE_LIMIT.limit,
  windowMs: 60_000,
} satisfies RateLimitRule;

export namespace GroupModel {
  const userId = Uuid;

  export const create = t.Object(
    {
      name: DisplayName(128),
      members: t.Array(userId, { maxItems: MAX_GROUP_MEMBERS - 1, uniqueItems: true }),
    },
    { additionalProperties: false },
  );

  export const created = t.Object({ groupId: t.String() });

  export const groupParams = t.Object({ groupId: Uuid });
  export const memberParams = t.Object({ groupId: Uuid, userId });

  export const addMember = t.Object({ userId }, { additionalProperties: false });

  export const group = t.Object({
    groupId: t.String(),
    name: t.String(),
    members: t.Array(t.String()),
    admins: t.Array(t.String()),
  });

  export const invitations = t.Object({
    invitations: t.Array(
      t.Object({ groupId: t.String(), name: t.String(), invitedBy: t.String(), invitedAt: t.Number() }),
    ),
  });
}
