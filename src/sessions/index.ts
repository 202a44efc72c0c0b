import { Elysia } from "elysia";
import { type ClientAddresses, clientAddressPlugin } from "../ratelimit/index.ts";
import { authPlugin } from "./auth.ts";
import { SessionModel } from "./model.ts";
import type { SessionService } from "./service.ts";

/** POST /v1/sessions (login), POST /v1/sessions/refresh and POST /v1/me/password. */
export function sessionRoutes(sessions: SessionService, addresses: ClientAddresses) {
  return new Elysia({ name: "clearbox.sessions", normalize: false })
    .use(clientAddressPlugin(addresses))
    .use(authPlugin(sessions))
    .post(
      "/v1/sessions",
      async ({ body, set, clientAddress }) => {
        set.status = 201;
        return sessions.login(body, clientAddress);
      },
      { clientAddress: true, body: SessionModel.login, response: { 201: SessionModel.tokens } },
    )
    .post(
      "/v1/sessions/refresh",
      async ({ body, set }) => {
        set.status = 201;
        return sessions.refresh(body.refreshToken);
      },
      { body: SessionModel.refresh, response: { 201: SessionModel.tokens } },
    )
    .post(
      "/v1/me/password",
      async ({ principal, tokenGeneration, body, clientAddress }) =>
        (await sessions.changePassword(principal, tokenGeneration, body, clientAddress)).tokens,
      {
        auth: true,
        clientAddress: true,
        body: SessionModel.changePassword,
        response: { 200: SessionModel.tokens },
      },
    );
}
