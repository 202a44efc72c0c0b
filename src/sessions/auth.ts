import { Elysia } from "elysia";
import { DomainError } from "../errors/index.ts";
import type { Principal, SessionService } from "./service.ts";

/** The bearer token of a request: `Authorization: Bearer <t>`, or `?token=<t>` for browser WebSockets. */
export function bearerToken(authorization: string | undefined, queryToken?: string): string | undefined {
  const match = authorization?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1] ?? queryToken;
}

/**
 * Adds the `auth` route option to a feature's routes: the route runs only for a valid access token
 * and receives `principal` and `tokenGeneration` (the device's token generation the token names,
 * which a route that issues tokens checks again when it writes); otherwise `unauthorized` (401).
 */
export function authPlugin(sessions: SessionService) {
  return new Elysia({ name: "clearbox.auth" }).macro({
    auth: {
      async resolve({ headers }): Promise<{ principal: Principal; tokenGeneration: number }> {
        const token = bearerToken(headers.authorization);
        if (!token) throw new DomainError("unauthorized", "missing bearer token");
        const { principal, generation } = await sessions.authenticateSession(token);
        return { principal, tokenGeneration: generation };
      },
    },
  });
}
