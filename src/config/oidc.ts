import { createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";

/** How ClearBox authenticates itself at the identity provider's token endpoint. */
export type OidcClientAuth =
  /** RFC 6749 §2.3.1 HTTP Basic with the client secret (OIDC Core §9 `client_secret_basic`). */
  | { method: "client_secret_basic"; secret: string }
  /** A JWT signed with our private key (OIDC Core §9 `private_key_jwt`); the provider holds the public key. */
  | { method: "private_key_jwt"; keyPem: string; alg: string; keyId?: string };

/** ClearBox as an OpenID Connect relying party (README "Sign-in with an identity provider"). */
export interface OidcConfig {
  /** The issuer identifier; discovery is `<issuer>/.well-known/openid-configuration`. */
  issuer: string;
  clientId: string;
  clientAuth: OidcClientAuth;
  /** Scopes asked for; always includes `openid`. */
  scopes: string[];
  /** The ID token claim the username of a provisioned account is taken from. */
  usernameClaim: string;
  /** Our callback as registered at the provider: `<public URL>/v1/oidc/callback`. */
  redirectUri: string;
  /** Exact URIs a browser may be sent back to with a sign-in code (loopback URIs are always allowed, RFC 8252 §7.3). */
  clientRedirectUris: string[];
}

/** The OIDC variables as the environment schema has validated them one by one. */
export interface OidcEnv {
  OIDC_ISSUER?: string;
  OIDC_CLIENT_ID?: string;
  OIDC_CLIENT_SECRET?: string;
  OIDC_PRIVATE_KEY_FILE?: string;
  OIDC_PRIVATE_KEY_ID?: string;
  OIDC_SCOPES: string;
  OIDC_USERNAME_CLAIM: string;
  OIDC_REDIRECT_URI?: string;
  OIDC_CLIENT_REDIRECT_URIS?: string;
  REGISTRATION: string;
}

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "[::1]", "localhost"]);

/** True for an http URL on the loopback interface (allowed without TLS, as RFC 8252 §7.3 does for redirects). */
export function isLoopbackUrl(url: URL): boolean {
  return url.protocol === "http:" && LOOPBACK_HOSTS.has(url.hostname);
}

function parseUrl(value: string): URL | undefined {
  try {
    return new URL(value);
  } catch {
    return undefined;
  }
}

/** An absolute https URL, or http on loopback; else the reason in a few words. */
function urlProblem(value: string, fragmentAllowed = false): string | undefined {
  const url = parseUrl(value);
  if (!url) return "not an absolute URL";
  if (url.protocol !== "https:" && !isLoopbackUrl(url)) return "https is required (http only on loopback)";
  if (!fragmentAllowed && url.hash) return "a fragment is not allowed";
  return undefined;
}

/** The JWS algorithm of a private key for private_key_jwt, or undefined when the key type has none here. */
function signingAlgorithm(pem: string): string | undefined {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType === "rsa") return "RS256";
  if (key.asymmetricKeyType === "ed25519") return "EdDSA";
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === "prime256v1") return "ES256";
    if (curve === "secp384r1") return "ES384";
  }
  return undefined;
}

/**
 * Checks the OIDC variables together (each was checked alone by the schema) and returns
 * [variable, one-line message] pairs in the configuration error's format, plus the resolved
 * configuration when there is nothing to complain about. No secret is echoed.
 */
export function resolveOidc(env: OidcEnv): { problems: [string, string][]; oidc?: OidcConfig } {
  const problems: [string, string][] = [];
  const set = [
    "OIDC_ISSUER",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_PRIVATE_KEY_FILE",
    "OIDC_REDIRECT_URI",
    "OIDC_CLIENT_REDIRECT_URIS",
  ].filter((name) => env[name as keyof OidcEnv] !== undefined);
  if (set.length === 0) {
    if (env.REGISTRATION === "oidc-only") {
      problems.push([
        "REGISTRATION",
        "REGISTRATION: oidc-only needs OIDC_ISSUER (and the other OIDC_* settings)",
      ]);
    }
    return { problems };
  }
  const because = `since ${set[0]} is set`;
  for (const name of ["OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_REDIRECT_URI"] as const) {
    if (env[name] === undefined) problems.push([name, `${name}: required ${because}`]);
  }
  if (env.OIDC_ISSUER !== undefined) {
    const problem = urlProblem(env.OIDC_ISSUER);
    const url = parseUrl(env.OIDC_ISSUER);
    if (problem)
      problems.push([
        "OIDC_ISSUER",
        `OIDC_ISSUER: expected the provider's issuer URL, got ${JSON.stringify(env.OIDC_ISSUER)} (${problem})`,
      ]);
    else if (url?.search)
      problems.push(["OIDC_ISSUER", "OIDC_ISSUER: an issuer identifier has no query (OIDC Discovery §2)"]);
  }
  if (env.OIDC_REDIRECT_URI !== undefined) {
    const problem = urlProblem(env.OIDC_REDIRECT_URI);
    if (problem) {
      problems.push([
        "OIDC_REDIRECT_URI",
        `OIDC_REDIRECT_URI: expected <public URL>/v1/oidc/callback, got ${JSON.stringify(env.OIDC_REDIRECT_URI)} (${problem})`,
      ]);
    }
  }
  const clientRedirectUris = (env.OIDC_CLIENT_REDIRECT_URIS ?? "")
    .split(",")
    .map((u) => u.trim())
    .filter(Boolean);
  for (const uri of clientRedirectUris) {
    const problem = urlProblem(uri);
    if (problem) {
      problems.push([
        "OIDC_CLIENT_REDIRECT_URIS",
        `OIDC_CLIENT_REDIRECT_URIS: ${JSON.stringify(uri)} is not usable (${problem})`,
      ]);
      break;
    }
  }
  const scopes = env.OIDC_SCOPES.split(/\s+/).filter(Boolean);
  if (!scopes.includes("openid")) {
    problems.push([
      "OIDC_SCOPES",
      `OIDC_SCOPES: expected space-separated scopes including openid, got ${JSON.stringify(env.OIDC_SCOPES)}`,
    ]);
  }
  let clientAuth: OidcClientAuth | undefined;
  if (env.OIDC_CLIENT_SECRET !== undefined && env.OIDC_PRIVATE_KEY_FILE !== undefined) {
    problems.push([
      "OIDC_CLIENT_SECRET",
      "OIDC_CLIENT_SECRET: set either it or OIDC_PRIVATE_KEY_FILE (private_key_jwt), not both",
    ]);
  } else if (env.OIDC_CLIENT_SECRET !== undefined) {
    clientAuth = { method: "client_secret_basic", secret: env.OIDC_CLIENT_SECRET };
  } else if (env.OIDC_PRIVATE_KEY_FILE !== undefined) {
    const file = env.OIDC_PRIVATE_KEY_FILE;
    try {
      const keyPem = readFileSync(file, "utf8");
      const alg = signingAlgorithm(keyPem);
      if (alg) clientAuth = { method: "private_key_jwt", keyPem, alg, keyId: env.OIDC_PRIVATE_KEY_ID };
      else
        problems.push([
          "OIDC_PRIVATE_KEY_FILE",
          `OIDC_PRIVATE_KEY_FILE: expected an RSA, P-256, P-384 or Ed25519 key, got ${file} (another type)`,
        ]);
    } catch (error) {
      const reason =
        (error as NodeJS.ErrnoException).code === "ENOENT"
          ? "no such file"
          : "not an unencrypted PEM private key";
      problems.push([
        "OIDC_PRIVATE_KEY_FILE",
        `OIDC_PRIVATE_KEY_FILE: expected a PEM private key file, got ${file} (${reason})`,
      ]);
    }
  } else {
    problems.push([
      "OIDC_CLIENT_SECRET",
      `OIDC_CLIENT_SECRET or OIDC_PRIVATE_KEY_FILE: one is required ${because}`,
    ]);
  }
  if (problems.length > 0 || !clientAuth) return { problems };
  return {
    problems,
    oidc: {
      issuer: env.OIDC_ISSUER as string,
      clientId: env.OIDC_CLIENT_ID as string,
      clientAuth,
      scopes,
      usernameClaim: env.OIDC_USERNAME_CLAIM,
      redirectUri: env.OIDC_REDIRECT_URI as string,
      clientRedirectUris,
    },
  };
}
