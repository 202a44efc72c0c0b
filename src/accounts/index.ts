import { Elysia } from "elysia";
import { AccountModel } from "./model.ts";
import type { AccountService } from "./service.ts";

/** POST /v1/accounts. */
export function accountRoutes(accounts: AccountService) {
  return new Elysia({ name: "clearbox.accounts", normalize: false }).post(
    "/v1/accounts",
    async ({ body, set }) => {
      set.status = 201;
      return accounts.register(body.username, body.password);
    },
    { body: AccountModel.register, response: { 201: AccountModel.registered } },
  );
}
