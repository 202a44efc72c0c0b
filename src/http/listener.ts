import { constants } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname, type NetworkInterfaceInfo, networkInterfaces } from "node:os";
import type { TLSOptions } from "bun";
import type { TlsFiles } from "../config/index.ts";

/**
 * Refuses every protocol below TLS 1.3. Bun.serve's `TLSOptions` (1.4.5) has no `minVersion`;
 * `secureOptions` is its documented OpenSSL-options bitmask and BoringSSL honours these bits
 * (test/tls/native.test.ts: `openssl s_client -tls1_2` gets alert 70, protocol_version).
 */
const TLS_1_3_ONLY = constants.SSL_OP_NO_TLSv1 | constants.SSL_OP_NO_TLSv1_1 | constants.SSL_OP_NO_TLSv1_2;

/**
 * Bun.serve's `tls` option for a listener: the PEM chain and key (read now, so a file changed
 * later takes a restart, like nginx's reload) with TLS 1.3 as the only protocol.
 * Undefined when `files` is: the listener speaks plain HTTP.
 */
export function listenerTls(files: TlsFiles | undefined): TLSOptions | undefined {
  if (!files) return undefined;
  return {
    cert: readFileSync(files.certFile, "utf8"),
    key: readFileSync(files.keyFile, "utf8"),
    secureOptions: TLS_1_3_ONLY,
  };
}

/**
 * The base URL a client on this machine reaches a listener at: `host` as bound, except that a
 * wildcard (0.0.0.0, ::) becomes the loopback address of its family. `https` when TLS is on.
 */
export function listenerUrl(host: string, port: number, tls: boolean): string {
  const reachable = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  const hostPart = reachable.includes(":") ? `[${reachable}]` : reachable;
  return `${tls ? "https" : "http"}://${hostPart}:${port}`;
}

/**
 * The `host:port` other machines reach a listener at, as the cluster view (`GET /admin/v1/cluster`)
 * shows it: `host` as bound, except that a wildcard (0.0.0.0, ::), which no other machine can
 * connect to, becomes this machine's first external interface address of that family (0.0.0.0:
 * IPv4; ::, which takes both families here: IPv6 other than link-local, else IPv4), or its host
 * name when it has none. An IPv6 address is bracketed (RFC 3986 §3.2.2), so `[::1]:8080`.
 * `interfaces` defaults to `os.networkInterfaces()` (tests pass their own).
 */
export function advertisedAddress(
  host: string,
  port: number,
  interfaces: NodeJS.Dict<NetworkInterfaceInfo[]> = networkInterfaces(),
): string {
  let reachable = host;
  if (host === "0.0.0.0" || host === "::") {
    const external = Object.values(interfaces)
      .flatMap((list) => list ?? [])
      .filter((info) => !info.internal);
    const v4 = external.find((info) => info.family === "IPv4");
    const v6 = external.find((info) => info.family === "IPv6" && !/^fe[89ab]/i.test(info.address));
    reachable = (host === "::" ? (v6 ?? v4) : v4)?.address ?? hostname();
  }
  return `${reachable.includes(":") ? `[${reachable}]` : reachable}:${port}`;
}
