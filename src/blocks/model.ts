import { t } from "elysia";
import { Uuid } from "../protocol/ids.ts";
import type { RateLimitRule } from "../ratelimit/index.ts";

/** Users one account may block at most. */
export const MAX_BLOCKS = 10_000;

/**
 * Block changes (`POST` and `DELETE /v1/blocks/:userId` together, refused ones and repeats
 * included) one device may make per minute. Each change is a transaction under the blocker's lock
 * and, on a cluster, a publication every other live node applies and acknowledges before the reply
 * (src/messaging/list-changes.ts): N-1 acknowledgements per call, so an unbudgeted loop of
 * idempotent unblocks kept every node busy. A person blocks a few users a day; 30 a minute leaves
 * room for a client replaying a list. Like the lookup budgets (src/users/service.ts), per device and
 * per account.
 */
export const BLOCK_CHANGE_LIMIT = {
  name: "blocks.change",
  limit: 30,
  windowMs: 60_000,
} satisfies RateLimitRule;

/**
 * Block changes all the devices of one account may make per minute together: four devices' worth.
 * A device costs only a login and an account may have 127, so the per-device budget alone would
 * let one account make 127 × 30 changes a minute.
 */
export const BLOCK_CHANGE_ACCOUNT_LIMIT = {
  name: "blocks.change.account",
  limit: 4 * BLOCK_CHANGE_LIMIT.limit,
  windowMs: 60_000,
} satisfies RateLimitRule;

export namespace BlockModel {
  export const userParams = t.Object({ userId: Uuid });

  export const list = t.Object({
    blocks: t.Array(t.Object({ userId: t.String(), blockedAt: t.Number() })),
  });
}
