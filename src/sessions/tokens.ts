import { createHash, createHmac, hkdfSync, randomBytes } from "node:crypto";
import { jwtVerify, SignJWT } from "jose";

/** What an access token says: who, which device, and the device's token generation when it was issued. */
export interface AccessClaims {
  userId: string;
  deviceId: number;
  generation: number;
}

/** A verified access token's claims and when it expires (Unix ms). */
export interface VerifiedAccess extends AccessClaims {
  expiresAt: number;
}

/**
 * Signs and verifies access tokens (HS256 JWT, RFC 7519, with jose) and mints opaque refresh tokens.
 * A token's `exp` is the issue time rounded up to the second plus the TTL, so a token lives at least
 * `accessTtlSeconds` (the `expiresIn` clients are told), at most one second more.
 */
export class TokenIssuer {
  private readonly key: Uint8Array;
  /** HMAC key of refresh-token successors, derived from the secret (HKDF-SHA256, RFC 5869). */
  private readonly successorKey: Buffer;

  constructor(
    secret: string,
    readonly accessTtlSeconds: number,
  ) {
    this.key = new TextEncoder().encode(secret);
    this.successorKey = Buffer.from(hkdfSync("sha256", secret, "", "clearbox refresh-token successor", 32));
  }

  /** When a token issued at `issuedAtMs` (Unix ms) expires, Unix ms (a whole second). */
  expiresAt(issuedAtMs: number): number {
    return (Math.ceil(issuedAtMs / 1000) + this.accessTtlSeconds) * 1000;
  }

  /**
   * A signed access token issued at `issuedAtMs` (default now). The same claims and issue time give
   * the same token (HS256 is deterministic): the refresh grace window re-issues a successor by it.
   */
  sign(claims: AccessClaims, issuedAtMs = Date.now()): Promise<string> {
    return new SignJWT({ sub: claims.userId, dev: claims.deviceId, gen: claims.generation })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setIssuedAt(Math.floor(issuedAtMs / 1000))
      .setExpirationTime(this.expiresAt(issuedAtMs) / 1000)
      .sign(this.key);
  }

  /** The claims of a valid, unexpired HS256 token signed with our secret, else undefined. */
  async verify(token: string): Promise<VerifiedAccess | undefined> {
    const payload = await jwtVerify(token, this.key, { algorithms: ["HS256"] }).then(
      (verified) => verified.payload as Record<string, unknown>,
      () => undefined,
    );
    if (!payload) return undefined;
    const { sub, dev, gen, exp } = payload;
    if (typeof sub !== "string" || typeof exp !== "number") return undefined;
    if (!Number.isInteger(dev) || !Number.isInteger(gen)) return undefined;
    return { userId: sub, deviceId: dev as number, generation: gen as number, expiresAt: exp * 1000 };
  }

  /** A new opaque refresh token and the hash under which it is stored. */
  static mintRefreshToken(): { token: string; hash: string } {
    const token = randomBytes(32).toString("base64url");
    return { token, hash: TokenIssuer.hashRefreshToken(token) };
  }

  /**
   * The refresh token that succeeds `refreshToken` when it is spent: HMAC-SHA256 of it under a key
   * derived from the secret, base64url (as random as a minted one to anyone without both). Derived
   * rather than stored, so that a second presentation within the grace window can be given the same
   * successor while the database still holds hashes only.
   */
  successorOf(refreshToken: string): { token: string; hash: string } {
    const token = createHmac("sha256", this.successorKey).update(refreshToken).digest("base64url");
    return { token, hash: TokenIssuer.hashRefreshToken(token) };
  }

  /** Refresh tokens are kept only as SHA-256 hashes, so a database leak does not leak sessions. */
  static hashRefreshToken(token: string): string {
    return createHash("sha256").update(token).digest("hex");
  }
}
