import { Elysia } from "elysia";
import type { Principal, SessionService } from "../sessions/service.ts";
import { ApiError } from "./errors.ts";

/** The bearer token of a request: `Authorization: Bearer <t>`, or `?token=<t>` for browser WebSockets. */
export function bearerToken(authorization: string | undefined, queryToken?: string): string | undefined {
  const match = authorization?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1] ?? queryToken;
}

/** Adds the `auth` route option: the route runs only for a valid access token and receives `principal`. */
export function authPlugin(sessions: SessionService) {
  return new Elysia({ name: "clearbox.auth" }).macro({
    auth: {
      async resolve({ headers }): Promise<{ principal: Principal }> {
        const token = bearerToken(headers.authorization);
        if (!token) throw new ApiError("unauthorized", "missing bearer token");
        return { principal: await sessions.authenticate(token) };
      },
    },
  });
}
