import { afterAll, describe, expect, test } from "bun:test";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/config/index.ts";

const dir = mkdtempSync(join(tmpdir(), "clearbox-oidc-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BASE = { DATA_DIR: dir, JWT_SECRET: "x".repeat(32) };
const OIDC = {
  OIDC_ISSUER: "https://id.example.org/realms/acme",
  OIDC_CLIENT_ID: "clearbox",
  OIDC_CLIENT_SECRET: "s3cr3t-value-from-the-provider",
  OIDC_REDIRECT_URI: "https://chat.example.org/v1/oidc/callback",
};

function pemFile(name: string, type: "rsa" | "ec" | "ed25519" | "dsa", options: object = {}): string {
  const { privateKey } = generateKeyPairSync(
    type as "rsa",
    {
      modulusLength: 2048,
      ...options,
      privateKeyEncoding: { type: "pkcs8", format: "pem" },
      publicKeyEncoding: { type: "spki", format: "pem" },
    } as never,
  ) as unknown as { privateKey: string };
  const file = join(dir, name);
  writeFileSync(file, privateKey);
  return file;
}

/** The one-line message loadConfig stops with, or "" when it starts. */
function problem(env: Record<string, string>): string {
  try {
    loadConfig({ ...BASE, ...env });
    return "";
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return String((error as Error).message);
  }
}

describe("OIDC configuration", () => {
  test("unset: no relying party, registration open", () => {
    const config = loadConfig(BASE);
    expect(config.oidc).toBeUndefined();
    expect(config.registration).toBe("open");
  });

  test("a complete client-secret configuration resolves with the documented defaults", () => {
    const config = loadConfig({
      ...BASE,
      ...OIDC,
      OIDC_CLIENT_REDIRECT_URIS: "https://app.example/a, https://app.example/b",
    });
    expect(config.oidc).toEqual({
      issuer: OIDC.OIDC_ISSUER,
      clientId: "clearbox",
      clientAuth: { method: "client_secret_basic", secret: OIDC.OIDC_CLIENT_SECRET },
      scopes: ["openid", "profile"],
      usernameClaim: "preferred_username",
      redirectUri: OIDC.OIDC_REDIRECT_URI,
      clientRedirectUris: ["https://app.example/a", "https://app.example/b"],
    });
  });

  test.each([
    ["RSA", "rsa", {}, "RS256"],
    ["P-256", "ec", { namedCurve: "P-256" }, "ES256"],
    ["Ed25519", "ed25519", {}, "EdDSA"],
  ] as const)("private_key_jwt with an %s key signs with %s", (_name, type, options, alg) => {
    const file = pemFile(`${type}.pem`, type, options);
    const { OIDC_CLIENT_SECRET: _, ...withoutSecret } = OIDC;
    const config = loadConfig({
      ...BASE,
      ...withoutSecret,
      OIDC_PRIVATE_KEY_FILE: file,
      OIDC_PRIVATE_KEY_ID: "k1",
    });
    expect(config.oidc?.clientAuth).toMatchObject({ method: "private_key_jwt", alg, keyId: "k1" });
  });

  test.each([
    [{ OIDC_CLIENT_ID: "clearbox" }, "OIDC_ISSUER: required since OIDC_CLIENT_ID is set"],
    [
      { ...OIDC, OIDC_ISSUER: "http://id.example.org" },
      'OIDC_ISSUER: expected the provider\'s issuer URL, got "http://id.example.org" (https is required (http only on loopback))',
    ],
    [{ ...OIDC, OIDC_ISSUER: "id.example.org" }, "(not an absolute URL)"],
    [
      { ...OIDC, OIDC_ISSUER: "https://id.example.org/?realm=x" },
      "OIDC_ISSUER: an issuer identifier has no query",
    ],
    [{ ...OIDC, OIDC_REDIRECT_URI: undefined }, "OIDC_REDIRECT_URI: required since OIDC_ISSUER is set"],
    [
      { ...OIDC, OIDC_REDIRECT_URI: "https://chat.example.org/cb#x" },
      "OIDC_REDIRECT_URI: expected <public URL>/v1/oidc/callback",
    ],
    [
      { ...OIDC, OIDC_CLIENT_REDIRECT_URIS: "https://app.example/a,http://app.example/b" },
      'OIDC_CLIENT_REDIRECT_URIS: "http://app.example/b" is not usable',
    ],
    [
      { ...OIDC, OIDC_SCOPES: "profile email" },
      "OIDC_SCOPES: expected space-separated scopes including openid",
    ],
    [
      { ...OIDC, OIDC_USERNAME_CLAIM: "preferred username" },
      "OIDC_USERNAME_CLAIM: expected an ID token claim name",
    ],
    [
      { ...OIDC, OIDC_CLIENT_SECRET: undefined },
      "OIDC_CLIENT_SECRET or OIDC_PRIVATE_KEY_FILE: one is required since OIDC_ISSUER is set",
    ],
    [
      { ...OIDC, OIDC_PRIVATE_KEY_FILE: "/nonexistent/key.pem" },
      "OIDC_CLIENT_SECRET: set either it or OIDC_PRIVATE_KEY_FILE",
    ],
    [
      { ...OIDC, OIDC_CLIENT_SECRET: undefined, OIDC_PRIVATE_KEY_FILE: "/nonexistent/key.pem" },
      "OIDC_PRIVATE_KEY_FILE: expected a PEM private key file, got /nonexistent/key.pem (no such file)",
    ],
    [{ REGISTRATION: "oidc-only" }, "REGISTRATION: oidc-only needs OIDC_ISSUER"],
    [
      { REGISTRATION: "sometimes" },
      "REGISTRATION: expected open (anyone), invite (with a token from the admin RPC), closed, or oidc-only",
    ],
  ])("case %# is refused: %s", (env, message) => {
    const defined = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<
      string,
      string
    >;
    const text = problem(defined);
    expect(text).toContain(message);
    // One line per problem, and the client secret never echoed.
    expect(text).not.toContain(OIDC.OIDC_CLIENT_SECRET);
  });

  test("a key file that is not a private key, or of a type without a JWS algorithm here, is refused", () => {
    const notKey = join(dir, "not-a-key.pem");
    writeFileSync(notKey, "hello");
    const { OIDC_CLIENT_SECRET: _, ...withoutSecret } = OIDC;
    expect(problem({ ...withoutSecret, OIDC_PRIVATE_KEY_FILE: notKey })).toContain(
      "(not an unencrypted PEM private key)",
    );
    const p521 = pemFile("p521.pem", "ec", { namedCurve: "P-521" });
    expect(problem({ ...withoutSecret, OIDC_PRIVATE_KEY_FILE: p521 })).toContain(
      "expected an RSA, P-256, P-384 or Ed25519 key",
    );
  });

  test("http is allowed for an issuer on loopback (tests, a provider on the same host)", () => {
    expect(loadConfig({ ...BASE, ...OIDC, OIDC_ISSUER: "http://127.0.0.1:8081" }).oidc?.issuer).toBe(
      "http://127.0.0.1:8081",
    );
  });
});
