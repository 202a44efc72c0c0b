import { type Static, t } from "elysia";
import { AccountModel } from "../accounts/model.ts";
import { DeviceId, DisplayName, RegistrationId } from "../protocol/ids.ts";

export namespace SessionModel {
  export const login = t.Object(
    {
      username: AccountModel.username,
      password: AccountModel.password,
      // TypeBox's own Integer (src/protocol): Elysia's t.Integer would also accept "7" in a JSON body.
      deviceId: t.Optional(DeviceId),
      registrationId: t.Optional(RegistrationId),
      deviceName: t.Optional(DisplayName(64)),
    },
    { additionalProperties: false },
  );
  export type Login = Static<typeof login>;

  export const refresh = t.Object(
    { refreshToken: t.String({ minLength: 1, maxLength: 256 }) },
    { additionalProperties: false },
  );

  /**
   * `POST /v1/me/password`: `logoutDevices` (default true) revokes every other device of the account;
   * the calling device is re-keyed either way, and the answer is its new session (`tokens`).
   */
  export const changePassword = t.Object(
    {
      currentPassword: AccountModel.password,
      newPassword: AccountModel.password,
      logoutDevices: t.Optional(t.Boolean()),
    },
    { additionalProperties: false },
  );

  export const tokens = t.Object({
    userId: t.String(),
    deviceId: t.Integer(),
    accessToken: t.String(),
    refreshToken: t.String(),
    expiresIn: t.Integer(),
  });
}
