import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runToEnd } from "./process.ts";

/** A throwaway certificate authority and one server certificate it signed, in a temporary directory. */
export interface TestPki {
  dir: string;
  /** The CA certificate (PEM), what clients trust. */
  caFile: string;
  ca: string;
  /** Server certificate for localhost and 127.0.0.1 (CN localhost), signed by the CA. */
  certFile: string;
  keyFile: string;
  /** Signs another certificate for localhost and 127.0.0.1 with the same CA, named `commonName`. */
  issue(commonName: string): { certFile: string; keyFile: string };
  remove(): void;
}

/** Runs openssl with `words` (split on spaces) then `rest`, and throws with its stderr when it fails. */
function openssl(cwd: string, words: string, ...rest: string[]): void {
  const run = Bun.spawnSync(["openssl", ...words.split(" "), ...rest], {
    cwd,
    stdout: "pipe",
    stderr: "pipe",
  });
  if (run.exitCode !== 0) throw new Error(`openssl ${words} failed: ${run.stderr.toString()}`);
}

const NEW_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/**
 * Makes a test CA and a server certificate with the machine's `openssl` (P-256 keys, one day).
 * Nothing is trusted system-wide: clients get the CA through `ca` options.
 */
export function createTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-pki-"));
  openssl(
    dir,
    `req -x509 ${NEW_KEY} -keyout ca.key -out ca.pem -days 1`,
    ...["-subj", "/CN=ClearBox test CA", "-addext", "basicConstraints=critical,CA:TRUE"],
    ...["-addext", "keyUsage=critical,keyCertSign"],
  );
  let serial = 0;
  const issue = (commonName: string) => {
    serial += 1;
    const name = `server-${serial}`;
    openssl(dir, `req ${NEW_KEY} -keyout ${name}.key -out ${name}.csr`, "-subj", `/CN=${commonName}`);
    writeFileSync(
      join(dir, `${name}.ext`),
      "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    openssl(
      dir,
      `x509 -req -in ${name}.csr -CA ca.pem -CAkey ca.key -set_serial ${serial} -days 1`,
      ...["-out", `${name}.pem`, "-extfile", `${name}.ext`],
    );
    return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`) };
  };
  const server = issue("localhost");
  return {
    dir,
    caFile: join(dir, "ca.pem"),
    ca: readFileSync(join(dir, "ca.pem"), "utf8"),
    ...server,
    issue,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** What `openssl s_client` reports for one handshake attempt. */
export interface Handshake {
  /** The handshake completed and the chain verified against the CA. */
  established: boolean;
  /** The negotiated protocol, e.g. `TLSv1.3`, when established. */
  protocol?: string;
  /** openssl's output, for failure messages. */
  output: string;
}

/**
 * Attempts one handshake with `openssl s_client` forcing `version` (its own process, so a server
 * in this test's process keeps answering). The chain must verify against `caFile` for `established`.
 */
export async function handshake(
  port: number,
  version: "tls1_2" | "tls1_3",
  caFile: string,
  host = "127.0.0.1",
): Promise<Handshake> {
  const args = `s_client -connect ${host}:${port} -${version} -servername localhost -verify_return_error -brief`;
  const { stdout, stderr, code } = await runToEnd(["openssl", ...args.split(" "), "-CAfile", caFile]);
  const output = `${stdout}${stderr}`;
  const protocol = /Protocol version: (\S+)/.exec(output)?.[1];
  return { established: code === 0 && protocol !== undefined, protocol, output };
}
