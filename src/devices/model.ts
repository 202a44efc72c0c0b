import { t } from "elysia";
import { MAX_DEVICE_ID } from "../protocol/ids.ts";

export namespace DeviceModel {
  export const params = t.Object({ deviceId: t.Integer({ minimum: 1, maximum: MAX_DEVICE_ID }) });

  export const list = t.Object({
    devices: t.Array(
      t.Object({
        deviceId: t.Integer(),
        name: t.Union([t.String(), t.Null()]),
        createdAt: t.Number(),
        lastSeen: t.Number(),
      }),
    ),
  });
}
