import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ConfigError, loadConfig } from "../../src/config/index.ts";
import { createTestPki, type TestPki } from "../support/tls.ts";

const base = { DATA_DIR: "/tmp/clearbox-config-unused", JWT_SECRET: "x".repeat(32) };

/** The configuration error's message for `env`, or a failure when it loads. */
function refusal(env: Record<string, string>): string {
  try {
    loadConfig({ ...base, ...env });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("the configuration was accepted");
}

describe("TLS and bind-address configuration", () => {
  let pki: TestPki;
  let other: { certFile: string; keyFile: string };

  beforeAll(() => {
    pki = createTestPki();
    other = pki.issue("other");
  });
  afterAll(() => pki?.remove());

  test("by default the public listener binds every interface and both listeners speak plain HTTP", () => {
    const config = loadConfig(base);
    expect(config.publicHost).toBe("0.0.0.0");
    expect(config.tls).toBeUndefined();
    expect(config.adminTls).toBeUndefined();
  });

  test("a readable certificate and its key turn TLS on, per listener", () => {
    const config = loadConfig({
      ...base,
      PUBLIC_HOST: "127.0.0.1",
      TLS_CERT_FILE: pki.certFile,
      TLS_KEY_FILE: pki.keyFile,
    });
    expect(config.publicHost).toBe("127.0.0.1");
    expect(config.tls).toEqual({ certFile: pki.certFile, keyFile: pki.keyFile });
    expect(config.adminTls).toBeUndefined();
    const admin = loadConfig({
      ...base,
      ADMIN_TLS_CERT_FILE: other.certFile,
      ADMIN_TLS_KEY_FILE: other.keyFile,
    });
    expect(admin.adminTls).toEqual(other);
    expect(admin.tls).toBeUndefined();
  });

  test("one file of a pair without the other is refused, naming the missing variable", () => {
    expect(refusal({ TLS_CERT_FILE: pki.certFile })).toContain(
      "TLS_KEY_FILE: expected a PEM private key file, since TLS_CERT_FILE is set",
    );
    expect(refusal({ ADMIN_TLS_KEY_FILE: pki.keyFile })).toContain(
      "ADMIN_TLS_CERT_FILE: expected a PEM certificate chain file, since ADMIN_TLS_KEY_FILE is set",
    );
  });

  test("a missing file is refused with its path and the reason", () => {
    expect(refusal({ TLS_CERT_FILE: "/nonexistent/cert.pem", TLS_KEY_FILE: pki.keyFile })).toContain(
      "TLS_CERT_FILE: expected a readable PEM certificate file, got /nonexistent/cert.pem (no such file)",
    );
  });

  test("a key path that cannot be read as a file is refused", () => {
    expect(refusal({ TLS_CERT_FILE: pki.certFile, TLS_KEY_FILE: pki.dir })).toContain(
      `TLS_KEY_FILE: expected a readable PEM private key file, got ${pki.dir} (a directory)`,
    );
  });

  test("files swapped, or a key that is not the certificate's, are refused without echoing the key", () => {
    const swapped = refusal({ TLS_CERT_FILE: pki.keyFile, TLS_KEY_FILE: pki.certFile });
    expect(swapped).toContain(`TLS_CERT_FILE: expected a PEM certificate, got ${pki.keyFile} (not one)`);
    expect(swapped).toContain(`TLS_KEY_FILE: expected an unencrypted PEM private key, got ${pki.certFile}`);
    const mismatched = refusal({ ADMIN_TLS_CERT_FILE: pki.certFile, ADMIN_TLS_KEY_FILE: other.keyFile });
    expect(mismatched).toContain(
      `ADMIN_TLS_KEY_FILE: expected the private key of ADMIN_TLS_CERT_FILE, got ${other.keyFile} (another key)`,
    );
    expect(mismatched).not.toContain("PRIVATE KEY");
  });

  test("an empty PUBLIC_HOST means the default, not an empty address", () => {
    expect(loadConfig({ ...base, PUBLIC_HOST: "" }).publicHost).toBe("0.0.0.0");
  });
});
