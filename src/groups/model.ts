import { t } from "elysia";
import { DisplayName, Uuid } from "../protocol/ids.ts";

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
