import { Elysia } from "elysia";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { BlockModel } from "./model.ts";
import type { BlockService } from "./service.ts";

export { BlockService } from "./service.ts";

/** The /v1/blocks routes of docs/PROTOCOL.md. */
export function blockRoutes(blocks: BlockService, sessions: SessionService) {
  return new Elysia({ name: "clearbox.blocks", normalize: false })
    .use(authPlugin(sessions))
    .get("/v1/blocks", async ({ principal }) => ({ blocks: await blocks.list(principal.userId) }), {
      auth: true,
      response: BlockModel.list,
    })
    .post(
      "/v1/blocks/:userId",
      async ({ principal, params, set }) => {
        await blocks.block(principal, params.userId);
        set.status = 204;
      },
      { auth: true, params: BlockModel.userParams },
    )
    .delete(
      "/v1/blocks/:userId",
      async ({ principal, params, set }) => {
        await blocks.unblock(principal, params.userId);
        set.status = 204;
      },
      { auth: true, params: BlockModel.userParams },
    );
}
