import { Elysia, t } from "elysia";
import { AccountModel } from "../accounts/model.ts";
import type { AccountService } from "../accounts/service.ts";
import type { Config } from "../config/index.ts";
import { DomainError } from "../errors/index.ts";
import { Uuid } from "../protocol/ids.ts";
import { type ClientAddresses, clientAddressPlugin } from "../ratelimit/index.ts";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { type ErasureDeps, ErasureService } from "./erasure.ts";
import { ExportService, exportResponse } from "./export.ts";
import { ReceiptSigner } from "./receipts.ts";

/**
 * What `DELETE /v1/me` accepts instead of a password from an account that has none: a sign-in
 * code of a fresh sign-in at the identity provider (`OidcService.reauthenticate`).
 */
export interface SignInReauthentication {
  reauthenticate(userId: string, code: string, codeVerifier?: string): Promise<void>;
}

/** `DELETE /v1/me`: the password again, or a fresh sign-in code from the identity provider. */
const EraseSelf = t.Union([
  t.Object({ password: AccountModel.password }, { additionalProperties: false }),
  t.Object(
    {
      signInCode: t.String({ minLength: 1, maxLength: 256 }),
      codeVerifier: t.Optional(t.String({ minLength: 43, maxLength: 128 })),
    },
    { additionalProperties: false },
  ),
]);

/** The public GDPR routes: export, erasure of oneself, erasure status and the receipt signing key. */
export function gdprRoutes(deps: {
  sessions: SessionService;
  accounts: AccountService;
  oidc?: SignInReauthentication;
  erasures: ErasureService;
  exports: ExportService;
  signer: ReceiptSigner;
  addresses: ClientAddresses;
}) {
  return new Elysia({ name: "clearbox.gdpr", normalize: false })
    .use(authPlugin(deps.sessions))
    .use(clientAddressPlugin(deps.addresses))
    .get(
      "/v1/me/export",
      async ({ principal, tokenGeneration }) =>
        exportResponse(
          await deps.exports.export(principal.userId, "self", {
            // Asked before each page: a device revoked (or an erasure started) ends its export.
            stillCurrent: () => deps.sessions.isCurrent(principal, tokenGeneration),
          }),
        ),
      { auth: true },
    )
    .delete(
      "/v1/me",
      async ({ principal, body, set, clientAddress }) => {
        // Re-checking who it is: a stolen access token alone cannot erase an account.
        if ("password" in body) {
          await deps.accounts.checkPasswordOf(principal.userId, body.password, clientAddress);
        } else if (deps.oidc) {
          await deps.oidc.reauthenticate(principal.userId, body.signInCode, body.codeVerifier);
        } else {
          throw new DomainError("invalid", "signInCode: sign-in with an identity provider is not configured");
        }
        const erasureId = await deps.erasures.start(principal.userId, "self");
        set.status = 202;
        return { erasureId };
      },
      { auth: true, clientAddress: true, body: EraseSelf },
    )
    .get("/v1/erasures/signing-key", () => ({
      algorithm: "Ed25519",
      format: "spki-der-base64",
      publicKey: deps.signer.publicKeyDer,
    }))
    .get(
      "/v1/erasures/:erasureId",
      async ({ params }) => {
        const status = await deps.erasures.status(params.erasureId);
        if (!status) throw new DomainError("not_found", "no such erasure");
        return status;
      },
      { params: t.Object({ erasureId: Uuid }) },
    );
}

/** The admin twins: erase or export any user. */
export function gdprAdminRoutes(deps: { erasures: ErasureService; exports: ExportService }) {
  const params = t.Object({ userId: Uuid });
  return new Elysia({ name: "clearbox.gdpr.admin" })
    .post(
      "/admin/v1/users/:userId/erase",
      async ({ params, set }) => {
        const erasureId = await deps.erasures.start(params.userId, "admin");
        set.status = 202;
        return { erasureId };
      },
      { params },
    )
    .get(
      "/admin/v1/users/:userId/export",
      async ({ params }) => exportResponse(await deps.exports.export(params.userId, "admin")),
      { params },
    );
}

export { ErasureLedger } from "./ledger.ts";

/** The GDPR services of one node, and their routes. */
export interface Gdpr {
  erasures: ErasureService;
  exports: ExportService;
  signer: ReceiptSigner;
  routes: ReturnType<typeof gdprRoutes>;
  adminRoutes: ReturnType<typeof gdprAdminRoutes>;
  /** Resumes the erasures a crash left unfinished; returns how many. */
  start(): Promise<number>;
  /** Stops the erasure jobs running here (`ErasureService.stop`; `releaseClaims: false` as a crash would). */
  stop(options?: { releaseClaims?: boolean }): Promise<void>;
}

/** Builds erasure, export and receipt signing (the signing key is loaded or created once). */
export async function createGdpr(
  deps: Omit<ErasureDeps, "signer"> & {
    config: Config;
    sessions: SessionService;
    accounts: AccountService;
    oidc?: SignInReauthentication;
    addresses: ClientAddresses;
  },
): Promise<Gdpr> {
  const signer = await ReceiptSigner.load(deps.db);
  const erasures = new ErasureService({ ...deps, signer });
  const exports = new ExportService({ ...deps });
  return {
    erasures,
    exports,
    signer,
    routes: gdprRoutes({
      sessions: deps.sessions,
      accounts: deps.accounts,
      oidc: deps.oidc,
      erasures,
      exports,
      signer,
      addresses: deps.addresses,
    }),
    adminRoutes: gdprAdminRoutes({ erasures, exports }),
    async start() {
      const resumed = await erasures.resumePending();
      if (resumed > 0) deps.logger.info({ resumed }, "resuming unfinished erasures");
      return resumed;
    },
    stop: (options) => erasures.stop(options),
  };
}
