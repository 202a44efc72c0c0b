import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";

/** A listener's certificate chain and private key, both PEM files checked at start-up. */
export interface TlsFiles {
  /** Leaf certificate first, then any intermediates (not the root). */
  certFile: string;
  /** The leaf's private key, unencrypted. */
  keyFile: string;
}

/** The certificate/key variable pairs, by listener. */
const PAIRS = [
  ["TLS_CERT_FILE", "TLS_KEY_FILE"],
  ["ADMIN_TLS_CERT_FILE", "ADMIN_TLS_KEY_FILE"],
] as const;

/** The pair as configuration, or undefined when TLS is off for that listener. */
export function tlsFiles(certFile: string | undefined, keyFile: string | undefined): TlsFiles | undefined {
  return certFile && keyFile ? { certFile, keyFile } : undefined;
}

/** Reads a file, or says in a few words why it cannot be read. */
function read(path: string): Buffer | string {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reasons: Record<string, string> = {
      ENOENT: "no such file",
      EACCES: "permission denied",
      EISDIR: "a directory",
    };
    return reasons[code ?? ""] ?? code ?? "unreadable";
  }
}

/**
 * Checks both TLS pairs so a bad file stops the node at start-up with a one-line message, not at
 * the first handshake: each variable set with its partner, each file readable, the certificate and
 * key PEM that Bun's TLS (BoringSSL) will take, and the key the certificate's own.
 * Returns [variable, message] pairs in the configuration error's format; paths are not secrets.
 */
export function tlsProblems(env: Record<string, unknown>): [string, string][] {
  const problems: [string, string][] = [];
  for (const [certVar, keyVar] of PAIRS) {
    const certFile = env[certVar];
    const keyFile = env[keyVar];
    if (typeof certFile !== "string" && typeof keyFile !== "string") continue;
    if (typeof certFile !== "string") {
      problems.push([certVar, `${certVar}: expected a PEM certificate chain file, since ${keyVar} is set`]);
      continue;
    }
    if (typeof keyFile !== "string") {
      problems.push([keyVar, `${keyVar}: expected a PEM private key file, since ${certVar} is set`]);
      continue;
    }
    let certificate: X509Certificate | undefined;
    const certBytes = read(certFile);
    if (typeof certBytes === "string") {
      problems.push([
        certVar,
        `${certVar}: expected a readable PEM certificate file, got ${certFile} (${certBytes})`,
      ]);
    } else {
      try {
        certificate = new X509Certificate(certBytes);
      } catch {
        problems.push([certVar, `${certVar}: expected a PEM certificate, got ${certFile} (not one)`]);
      }
    }
    let key: KeyObject | undefined;
    const keyBytes = read(keyFile);
    if (typeof keyBytes === "string") {
      problems.push([
        keyVar,
        `${keyVar}: expected a readable PEM private key file, got ${keyFile} (${keyBytes})`,
      ]);
    } else {
      try {
        key = createPrivateKey(keyBytes);
      } catch {
        problems.push([
          keyVar,
          `${keyVar}: expected an unencrypted PEM private key, got ${keyFile} (not one)`,
        ]);
      }
    }
    if (certificate && key && !certificate.checkPrivateKey(key)) {
      problems.push([
        keyVar,
        `${keyVar}: expected the private key of ${certVar}, got ${keyFile} (another key)`,
      ]);
    }
  }
  return problems;
}
