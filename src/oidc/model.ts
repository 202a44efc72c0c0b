import { type Static, t } from "elysia";
import { DeviceId, DisplayName, RegistrationId, Uuid } from "../protocol/ids.ts";
import { FORM_MEDIA_TYPE } from "../protocol/json.ts";
import { POLL_INTERVAL_SECONDS } from "./relying-party.ts";

export namespace OidcModel {
  /** `GET /v1/oidc/authorize`: OAuth-style names, since a browser app builds this URL. */
  export const authorize = t.Object({
    redirect_uri: t.String({ minLength: 1, maxLength: 2048 }),
    code_challenge: t.String({ minLength: 1, maxLength: 128 }),
    code_challenge_method: t.Optional(t.Literal("S256")),
    prompt: t.Optional(t.Literal("login")),
  });

  /** `POST /v1/oidc/sessions`: a sign-in code and the device, as `POST /v1/sessions` takes it. */
  export const exchange = t.Object(
    {
      code: t.String({ minLength: 1, maxLength: 256 }),
      codeVerifier: t.Optional(t.String({ minLength: 43, maxLength: 128 })),
      /** The account this client already holds: a code of another account is refused (401). */
      userId: t.Optional(Uuid),
      deviceId: t.Optional(DeviceId),
      registrationId: t.Optional(RegistrationId),
      deviceName: t.Optional(DisplayName(64)),
    },
    { additionalProperties: false },
  );
  export type Exchange = Static<typeof exchange>;

  export const deviceStart = t.Object({
    deviceCode: t.String(),
    userCode: t.String(),
    verificationUri: t.String(),
    verificationUriComplete: t.Optional(t.String()),
    expiresIn: t.Integer(),
    interval: t.Integer(),
  });

  export const devicePoll = t.Object(
    {
      /** As `POST /v1/oidc/device` gave it: the provider's code sealed by this server. */
      deviceCode: t.String({ minLength: 1, maxLength: 4096 }),
      /** The interval the client waits now (seconds): `slow_down` adds 5 to it (RFC 8628 §3.5), up to 600. */
      interval: t.Optional(
        t.Integer({ minimum: POLL_INTERVAL_SECONDS.min, maximum: POLL_INTERVAL_SECONDS.max }),
      ),
    },
    { additionalProperties: false },
  );

  export const devicePolled = t.Union([
    t.Object({ status: t.Union([t.Literal("pending"), t.Literal("slow_down")]), interval: t.Integer() }),
    t.Object({ status: t.Literal("done"), code: t.String() }),
  ]);

  /** Back-Channel Logout 1.0 §2.5: a form with `logout_token`; other fields are ignored. */
  export const backChannelLogout = t.Object(
    { logout_token: t.String({ minLength: 1, maxLength: 16_384 }) },
    { mediaType: FORM_MEDIA_TYPE },
  );

  export const adminLogout = t.Object(
    { subject: t.String({ minLength: 1, maxLength: 255 }) },
    { additionalProperties: false },
  );
}
