import { Type } from "@sinclair/typebox";
import { type Static, t } from "elysia";
import { Uuid } from "../protocol/ids.ts";

/** Most one-time keys of each kind in one upload (docs/PROTOCOL.md). */
export const MAX_KEYS_PER_UPLOAD = 100;

/** Key ids are 24-bit, as Signal clients generate them. */
const keyId = Type.Integer({ minimum: 0, maximum: 0xff_ffff });

/** Standard base64 with padding; lengths are checked again on the decoded bytes. */
const base64 = (maxLength: number) =>
  t.String({
    minLength: 4,
    maxLength,
    pattern: "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
  });

// Upper bounds a little above the exact sizes, so a wrong size gets the precise message from the service.
const ecKey = base64(64);
const kyberKey = base64(2200);
const signature = base64(128);

export namespace KeysModel {
  export const signedEcKey = t.Object(
    { keyId, publicKey: ecKey, signature },
    { additionalProperties: false },
  );
  export const signedKyberKey = t.Object(
    { keyId, publicKey: kyberKey, signature },
    { additionalProperties: false },
  );
  export const ecPreKey = t.Object({ keyId, publicKey: ecKey }, { additionalProperties: false });

  export const upload = t.Object(
    {
      identityKey: ecKey,
      signedPreKey: signedEcKey,
      kyberPreKey: signedKyberKey,
      preKeys: t.Optional(t.Array(ecPreKey, { maxItems: MAX_KEYS_PER_UPLOAD })),
      kyberPreKeys: t.Optional(t.Array(signedKyberKey, { maxItems: MAX_KEYS_PER_UPLOAD })),
    },
    { additionalProperties: false },
  );
  export type Upload = Static<typeof upload>;

  export const count = t.Object({ preKeys: t.Integer(), kyberPreKeys: t.Integer() });

  export const userParams = t.Object({ userId: Uuid });

  const signedKey = t.Object({ keyId: t.Integer(), publicKey: t.String(), signature: t.String() });
  export const bundle = t.Object({
    userId: t.String(),
    devices: t.Array(
      t.Object({
        deviceId: t.Integer(),
        registrationId: t.Integer(),
        identityKey: t.String(),
        signedPreKey: signedKey,
        kyberPreKey: signedKey,
        preKey: t.Union([t.Object({ keyId: t.Integer(), publicKey: t.String() }), t.Null()]),
      }),
    ),
  });
  export type Bundle = Static<typeof bundle>;
}
