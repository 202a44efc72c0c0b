import { Type } from "@sinclair/typebox";
import { type Static, t } from "elysia";
import { AccountModel } from "../accounts/model.ts";
import { MAX_DEVICE_ID } from "../devices/service.ts";

export namespace SessionModel {
  export const login = t.Object(
    {
      username: AccountModel.username,
      password: AccountModel.password,
      // TypeBox's own Integer: Elysia's t.Integer would also accept "7" in a JSON body.
      deviceId: t.Optional(Type.Integer({ minimum: 1, maximum: MAX_DEVICE_ID })),
      registrationId: t.Optional(Type.Integer({ minimum: 1, maximum: 16380 })),
      deviceName: t.Optional(t.String({ minLength: 1, maxLength: 64 })),
    },
    { additionalProperties: false },
  );
  export type Login = Static<typeof login>;

  export const refresh = t.Object(
    { refreshToken: t.String({ minLength: 1, maxLength: 256 }) },
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
