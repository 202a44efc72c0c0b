import { hkdfSync } from "node:crypto";
import { EncryptJWT, jwtDecrypt } from "jose";

/** What a browser sign-in must remember between leaving for the provider and coming back. */
export interface BrowserFlow {
  /** Sent to the provider and checked on return (CSRF). */
  state: string;
  /** Sent to the provider and checked in the ID token (replay). */
  nonce: string;
  /** Our PKCE verifier for the provider's code. */
  codeVerifier: string;
  /** Where the browser goes back with the sign-in code (checked against the allow-list when the flow began). */
  returnTo: string;
  /** The client's own PKCE challenge, which the sign-in code is bound to. */
  codeChallenge: string;
}

/** Name of the cookie that carries the sealed flow. */
export const FLOW_COOKIE = "clearbox_oidc";
/** How long a browser has to come back from the provider, seconds. */
export const FLOW_TTL_SECONDS = 600;

/**
 * Seals a browser flow into a cookie value (JWE, `dir` + A256GCM, with a key derived from the
 * node's JWT secret by HKDF, so every node of the cluster can open it) and opens it again. The
 * flow lives in the browser that started it, as express-openid-connect and Auth.js keep theirs:
 * nothing is stored per unauthenticated request, and a callback arriving in another browser finds
 * no cookie (login CSRF, RFC 6749 §10.12).
 */
export class FlowSealer {
  private readonly key: Uint8Array;

  constructor(secret: string) {
    this.key = new Uint8Array(hkdfSync("sha256", secret, "", "clearbox oidc browser flow v1", 32));
  }

  seal(flow: BrowserFlow): Promise<string> {
    return new EncryptJWT({ ...flow })
      .setProtectedHeader({ alg: "dir", enc: "A256GCM" })
      .setIssuedAt()
      .setExpirationTime(`${FLOW_TTL_SECONDS}s`)
      .encrypt(this.key);
  }

  /** The flow in a sealed value, or undefined when it is missing, altered, foreign or expired. */
  async open(sealed: string | undefined): Promise<BrowserFlow | undefined> {
    if (!sealed) return undefined;
    try {
      const { payload } = await jwtDecrypt(sealed, this.key);
      const { state, nonce, codeVerifier, returnTo, codeChallenge } = payload as Record<string, unknown>;
      if (
        typeof state !== "string" ||
        typeof nonce !== "string" ||
        typeof codeVerifier !== "string" ||
        typeof returnTo !== "string" ||
        typeof codeChallenge !== "string"
      ) {
        return undefined;
      }
      return { state, nonce, codeVerifier, returnTo, codeChallenge };
    } catch {
      return undefined;
    }
  }
}

/** The value of one cookie in a `Cookie` header (RFC 6265 §5.4), or undefined. */
export function cookieValue(header: string | null | undefined, name: string): string | undefined {
  for (const part of header?.split(";") ?? []) {
    const at = part.indexOf("=");
    if (at > 0 && part.slice(0, at).trim() === name) return part.slice(at + 1).trim();
  }
  return undefined;
}
