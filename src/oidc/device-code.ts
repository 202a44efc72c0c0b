import { hkdfSync, randomBytes } from "node:crypto";
import { EncryptJWT, jwtDecrypt } from "jose";

/** The longest a sealed device code lives, seconds, whatever `expires_in` the provider gave (24 hours). */
export const DEVICE_CODE_MAX_TTL_SECONDS = 86_400;

/** A device code this node (or another node of the cluster) issued, as opened from its sealed form. */
export interface IssuedDeviceCode {
  /** The provider's `device_code` (RFC 8628 §3.2), sent to its token endpoint on each poll. */
  deviceCode: string;
  /** A random id of this sign-in (base64url, 16 bytes): the key of its poll budget. */
  id: string;
}

/**
 * Seals the provider's device code into the `deviceCode` handed to the client at
 * `POST /v1/oidc/device` (JWE, `dir` + A256GCM, key derived from the node's JWT secret by HKDF with
 * its own label, as `FlowSealer` does for the browser flow's cookie, so every node of the cluster
 * can open it), and opens it again at `POST /v1/oidc/device/poll`. A code this server did not
 * issue, altered, or past the provider's `expires_in` does not open: such a poll is refused without
 * asking the provider and without spending anyone's budget.
 */
export class DeviceCodeSealer {
  private readonly key: Uint8Array;

  constructor(secret: string) {
    this.key = new Uint8Array(hkdfSync("sha256", secret, "", "clearbox oidc device code v1", 32));
  }

  /** Seals `deviceCode` for `expiresInSeconds` (the provider's `expires_in`, at most 24 hours). */
  seal(deviceCode: string, expiresInSeconds: number): Promise<string> {
    const ttl = Math.min(DEVICE_CODE_MAX_TTL_SECONDS, Math.max(1, Math.ceil(expiresInSeconds)));
    return new EncryptJWT({ dc: deviceCode })
      .setProtectedHeader({ alg: "dir", enc: "A256GCM" })
      .setJti(randomBytes(16).toString("base64url"))
      .setIssuedAt()
      .setExpirationTime(`${ttl}s`)
      .encrypt(this.key);
  }

  /** The issued code in a sealed value, or undefined when it is altered, foreign, malformed or expired. */
  async open(sealed: string): Promise<IssuedDeviceCode | undefined> {
    try {
      const { payload } = await jwtDecrypt(sealed, this.key);
      const { dc, jti } = payload as Record<string, unknown>;
      if (typeof dc !== "string" || typeof jti !== "string") return undefined;
      return { deviceCode: dc, id: jti };
    } catch {
      return undefined;
    }
  }
}
