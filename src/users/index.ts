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

/**
 * `GET /admin/v1/users?username=` on the admin listener → `{userId, username}`: the account id the
 * admin export and erasure routes take, for an operator handed a request that names a username.
 * The name is taken in lower case (usernames have no capitals: an operator copying "Alice" from a
 * request means alice); 400 `invalid`, saying the rule in words, for a name that still breaks the
 * username rule; 404 `not_found` when none (or erasing).
 * The username travels in the query: the admin audit records the route pattern, never the query.
 */
export function userAdminRoutes(directory: UserDirectory) {
  return new Elysia({ name: "clearbox.users.admin", normalize: false }).get(
    "/admin/v1/users",
    ({ query }) => directory.findForAdmin(query.username),
    {
      // Before validation (Elysia runs transform first).
      transform({ query }) {
        if (typeof query.username === "string") query.username = query.username.toLowerCase();
      },
      query: UserModel.lookupQuery,
      response: UserModel.user,
    },
  );
}
