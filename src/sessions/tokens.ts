import { createHash, randomBytes } from "node:crypto";
import { jwt } from "@elysiajs/jwt";

/** What an access token says: who, which device, and the device's token generation when it was issued. */
export interface AccessClaims {
  userId: string;
  deviceId: number;
  generation: number;
}

/** Signs and verifies access tokens (HS256 JWT via @elysiajs/jwt) and mints opaque refresh tokens. */
export class TokenIssuer {
  private readonly jwt;

  constructor(
    secret: string,
    readonly accessTtlSeconds: number,
  ) {
    this.jwt = jwt({ name: "jwt", secret, alg: "HS256" }).decorator.jwt;
  }

  /** A signed access token that expires after the configured TTL. */
  sign(claims: AccessClaims): Promise<string> {
    return this.jwt.sign({
      sub: claims.userId,
      dev: claims.deviceId,
      gen: claims.generation,
      exp: `${this.accessTtlSeconds}s`,
    });
  }

  /** The claims of a valid, unexpired token signed with our secret, else undefined. */
  async verify(token: string): Promise<AccessClaims | undefined> {
    const payload = await this.jwt.verify(token).catch(() => false as const);
    if (!payload) return undefined;
    const { sub, dev, gen, exp } = payload as Record<string, unknown>;
    if (typeof sub !== "string" || typeof exp !== "number") return undefined;
    if (!Number.isInteger(dev) || !Number.isInteger(gen)) return undefined;
    return { userId: sub, deviceId: dev as number, generation: gen as number };
  }

  /** A new opaque refresh token and the hash under which it is stored. */
  static mintRefreshToken(): { token: string; hash: string } {
    const token = randomBytes(32).toString("base64url");
    return { token, hash: TokenIssuer.hashRefreshToken(token) };
  }

  /** Refresh tokens are kept only as SHA-256 hashes, so a database leak does not leak sessions. */
  static hashRefreshToken(token: string): string {
    return createHash("sha256").update(token).digest("hex");
  }
}
