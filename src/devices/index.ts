import { Elysia } from "elysia";
import { authPlugin } from "../sessions/auth.ts";
import type { SessionService } from "../sessions/service.ts";
import { DeviceModel } from "./model.ts";
import type { DeviceService } from "./service.ts";

/** GET /v1/devices and DELETE /v1/devices/:deviceId for the caller's own account. */
export function deviceRoutes(devices: DeviceService, sessions: SessionService) {
  return new Elysia({ name: "clearbox.devices", normalize: false })
    .use(authPlugin(sessions))
    .get("/v1/devices", async ({ principal }) => ({ devices: await devices.list(principal.userId) }), {
      auth: true,
      response: DeviceModel.list,
    })
    .delete(
      "/v1/devices/:deviceId",
      async ({ principal, params, set }) => {
        await devices.remove(principal.userId, params.deviceId);
        set.status = 204;
      },
      { auth: true, params: DeviceModel.params },
    );
}
