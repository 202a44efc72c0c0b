import { t } from "elysia";
import { Uuid } from "../protocol/ids.ts";

/** Users one account may block at most. */
export const MAX_BLOCKS = 10_000;

export namespace BlockModel {
  export const userParams = t.Object({ userId: Uuid });

  export const list = t.Object({
    blocks: t.Array(t.Object({ userId: t.String(), blockedAt: t.Number() })),
  });
}
