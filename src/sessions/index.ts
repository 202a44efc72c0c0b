import { Elysia } from "elysia";
import { type ClientAddresses, clientAddressPlugin } from "../ratelimit/index.ts";
import { SessionModel } from "./model.ts";
import type { SessionService } from "./service.ts";

/** POST /v1/sessions (login) and POST /v1/sessions/refresh. */
export function sessionRoutes(sessions: SessionService, addresses: ClientAddresses) {
  return new Elysia({ name: "clearbox.sessions", normalize: false })
    .use(clientAddressPlugin(addresses))
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
    );
}
