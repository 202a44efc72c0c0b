import { Elysia } from "elysia";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { KeysModel } from "./model.ts";
import type { KeyService } from "./service.ts";

/** PUT /v1/keys, GET /v1/keys/count and GET /v1/keys/:userId (docs/PROTOCOL.md). */
export function keyRoutes(keys: KeyService, sessions: SessionService) {
  return new Elysia({ name: "clearbox.keys", normalize: false })
    .use(authPlugin(sessions))
    .put(
      "/v1/keys",
      async ({ principal, body, set }) => {
        await keys.upload(principal, body);
        set.status = 204;
      },
      { auth: true, body: KeysModel.upload },
    )
    .get("/v1/keys/count", ({ principal }) => keys.count(principal), {
      auth: true,
      response: KeysModel.count,
    })
    .get("/v1/keys/:userId", ({ principal, params }) => keys.fetchBundle(principal, params.userId), {
      auth: true,
      params: KeysModel.userParams,
      response: KeysModel.bundle,
    });
}
