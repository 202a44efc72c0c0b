import { Elysia } from "elysia";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { UserModel } from "./model.ts";
import type { UserDirectory } from "./service.ts";

export { USER_LOOKUP_ACCOUNT_LIMIT, USER_LOOKUP_LIMIT, UserDirectory } from "./service.ts";

/** GET /v1/users?username= and GET /v1/users/:userId (docs/PROTOCOL.md): exact lookups, rate-limited per device. */
export function userRoutes(directory: UserDirectory, sessions: SessionService) {
  return new Elysia({ name: "clearbox.users", normalize: false })
    .use(authPlugin(sessions))
    .get("/v1/users", ({ principal, query }) => directory.byUsername(principal, query.username), {
      auth: true,
      query: UserModel.lookupQuery,
      response: UserModel.user,
    })
    .get("/v1/users/:userId", ({ principal, params }) => directory.byId(principal, params.userId), {
      auth: true,
      params: UserModel.userParams,
      response: UserModel.user,
    });
}
