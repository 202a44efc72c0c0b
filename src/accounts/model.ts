import { Type } from "@sinclair/typebox";
import { type Static, t } from "elysia";
import { PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, PASSWORD_RULE } from "../protocol/accounts.ts";

export namespace AccountModel {
  /** The username rule (registration, sign-in, OIDC provisioning, lookups); refusals say it in words. */
  export const username = t.String({
    minLength: 3,
    maxLength: 32,
    pattern: "^[a-z0-9_.-]+$",
    errorMessage: "must be 3 to 32 characters of a-z, 0-9, '_', '.' and '-' (lower case)",
  });
  /** The password rule (`src/protocol/accounts.ts`); refusals say it in words, as for the username. */
  export const password = t.String({
    minLength: PASSWORD_MIN_LENGTH,
    maxLength: PASSWORD_MAX_LENGTH,
    errorMessage: PASSWORD_RULE,
  });

  /** An invite token (`REGISTRATION=invite`), as the admin RPC issued it. */
  export const registrationToken = t.String({ minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9._~-]+$" });

  export const register = t.Object(
    { username, password, registrationToken: t.Optional(registrationToken) },
    { additionalProperties: false },
  );
  export type Register = Static<typeof register>;

  export const registered = t.Object({ userId: t.String() });

  /** `POST /admin/v1/registration-tokens`: the token (else a random one), its uses (null: no limit) and expiry (Unix ms; null: never). */
  export const createToken = t.Object(
    {
      token: t.Optional(registrationToken),
      usesAllowed: t.Optional(t.Union([Type.Integer({ minimum: 1, maximum: 1_000_000_000 }), t.Null()])),
      expiresAt: t.Optional(
        t.Union([Type.Integer({ minimum: 0, maximum: 8_640_000_000_000_000 }), t.Null()]),
      ),
    },
    { additionalProperties: false },
  );

  export const tokenParams = t.Object({ token: registrationToken });

  export const listQuery = t.Object({ valid: t.Optional(t.Union([t.Literal("true"), t.Literal("false")])) });
}
