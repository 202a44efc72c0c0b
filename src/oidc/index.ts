import { Elysia } from "elysia";
import { DomainError } from "../errors/index.ts";
import { type ClientAddresses, clientAddressPlugin } from "../ratelimit/index.ts";
import { SessionModel } from "../sessions/model.ts";
import { cookieValue, FLOW_COOKIE, FLOW_TTL_SECONDS } from "./flow-cookie.ts";
import { OidcModel } from "./model.ts";
import type { OidcService } from "./service.ts";

export { RelyingParty } from "./relying-party.ts";
export { OidcService } from "./service.ts";

/** The service, or `not_found` when OIDC_ISSUER is not set (the routes exist on every node, for one API type). */
function configured(service: OidcService | undefined): OidcService {
  if (!service)
    throw new DomainError("not_found", "sign-in with an identity provider is not configured on this server");
  return service;
}

/** The flow cookie's attributes: only sent back to our callback, never readable by scripts. */
function flowCookie(service: OidcService, value: string, maxAge: number): string {
  const callback = new URL(service.config.redirectUri);
  const secure = callback.protocol === "https:" ? "; Secure" : "";
  // SameSite=Lax: the provider's redirect back is a top-level GET navigation, which Lax lets through.
  return `${FLOW_COOKIE}=${value}; Path=${callback.pathname}; Max-Age=${maxAge}; HttpOnly; SameSite=Lax${secure}`;
}

/**
 * The public OIDC routes (docs/PROTOCOL.md, "Sign-in with the identity provider"):
 * `GET /v1/oidc/authorize`, `GET /v1/oidc/callback`, `POST /v1/oidc/sessions`,
 * `POST /v1/oidc/device`, `POST /v1/oidc/device/poll`, `POST /v1/oidc/backchannel-logout`.
 */
export function oidcRoutes(oidc: OidcService | undefined, addresses: ClientAddresses) {
  const service = () => configured(oidc);
  return new Elysia({ name: "clearbox.oidc", normalize: false })
    .use(clientAddressPlugin(addresses))
    .get(
      "/v1/oidc/authorize",
      async ({ query, set }) => {
        const { location, sealedFlow } = await service().beginBrowserSignIn({
          redirectUri: query.redirect_uri,
          codeChallenge: query.code_challenge,
          codeChallengeMethod: query.code_challenge_method,
          prompt: query.prompt,
        });
        set.status = 303;
        set.headers.location = location;
        set.headers["set-cookie"] = flowCookie(service(), sealedFlow, FLOW_TTL_SECONDS);
        set.headers["cache-control"] = "no-store";
      },
      { query: OidcModel.authorize },
    )
    .get("/v1/oidc/callback", async ({ request, set }) => {
      // The flow is over either way: the cookie goes, so a second use of the same response fails.
      set.headers["set-cookie"] = flowCookie(service(), "", 0);
      set.headers["cache-control"] = "no-store";
      const { location } = await service().completeBrowserSignIn(
        new URL(request.url).searchParams,
        cookieValue(request.headers.get("cookie"), FLOW_COOKIE),
      );
      set.status = 303;
      set.headers.location = location;
      // The return URI's query holds a sign-in code: keep it out of the next page's Referer.
      set.headers["referrer-policy"] = "no-referrer";
    })
    .post(
      "/v1/oidc/sessions",
      async ({ body, set }) => {
        set.status = 201;
        return service().exchange(body);
      },
      { body: OidcModel.exchange, response: { 201: SessionModel.tokens } },
    )
    .post(
      "/v1/oidc/device",
      async ({ set, clientAddress }) => {
        set.headers["cache-control"] = "no-store";
        return service().beginDeviceSignIn(clientAddress);
      },
      { clientAddress: true, response: OidcModel.deviceStart },
    )
    .post(
      "/v1/oidc/device/poll",
      async ({ body, set, clientAddress }) => {
        set.headers["cache-control"] = "no-store";
        return service().pollDeviceSignIn(body.deviceCode, body.interval ?? 5, clientAddress);
      },
      { clientAddress: true, body: OidcModel.devicePoll, response: OidcModel.devicePolled },
    )
    .post(
      "/v1/oidc/backchannel-logout",
      async ({ body, set }) => {
        // Back-Channel Logout 1.0 §2.8: 200 on success, never cached.
        set.headers["cache-control"] = "no-store";
        await service().backChannelLogout(body.logout_token);
        return "";
      },
      { body: OidcModel.backChannelLogout },
    );
}

/** The admin twin for providers without back-channel logout: `POST /admin/v1/oidc/logout`. */
export function oidcAdminRoutes(service: OidcService) {
  return new Elysia({ name: "clearbox.oidc.admin" }).post(
    "/admin/v1/oidc/logout",
    ({ body }) => service.logoutSubject(body.subject),
    { body: OidcModel.adminLogout },
  );
}
