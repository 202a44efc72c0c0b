import { Elysia } from "elysia";
import { type ClientAddresses, clientAddressPlugin } from "../ratelimit/index.ts";
import { AccountModel } from "./model.ts";
import type { RegistrationTokens } from "./registration.ts";
import type { AccountService } from "./service.ts";

/** POST /v1/accounts. */
export function accountRoutes(accounts: AccountService, addresses: ClientAddresses) {
  return new Elysia({ name: "clearbox.accounts", normalize: false }).use(clientAddressPlugin(addresses)).post(
    "/v1/accounts",
    async ({ body, set, clientAddress }) => {
      set.status = 201;
      return accounts.register(body.username, body.password, {
        address: clientAddress,
        registrationToken: body.registrationToken,
      });
    },
    { clientAddress: true, body: AccountModel.register, response: { 201: AccountModel.registered } },
  );
}

/**
 * The admin routes of invite tokens (`REGISTRATION=invite`), after Synapse's registration-token
 * admin API: `POST`, `GET` and `DELETE /admin/v1/registration-tokens[/:token]`. Mounted inside the
 * admin listener, which authenticates and audits every call (by route pattern: never the token).
 */
export function registrationAdminRoutes(tokens: RegistrationTokens) {
  return new Elysia({ name: "clearbox.registration-admin" })
    .post(
      "/admin/v1/registration-tokens",
      async ({ body, set }) => {
        const created = await tokens.create(body);
        set.status = 201;
        return created;
      },
      { body: AccountModel.createToken },
    )
    .get(
      "/admin/v1/registration-tokens",
      async ({ query }) => ({
        tokens: await tokens.list(query.valid === undefined ? undefined : query.valid === "true"),
      }),
      { query: AccountModel.listQuery },
    )
    .delete(
      "/admin/v1/registration-tokens/:token",
      async ({ params, set }) => {
        await tokens.revoke(params.token);
        set.status = 204;
      },
      { params: AccountModel.tokenParams },
    );
}
