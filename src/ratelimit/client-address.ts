import { BlockList, isIP } from "node:net";
import { Elysia } from "elysia";

/** What `ClientAddresses.of` needs of a listener: Bun's `Server.requestIP`. */
export interface PeerSource {
  requestIP(request: Request): { address: string } | null;
}

/** The rate-limit key when the peer is unknown (a request handled without a socket, e.g. `app.handle`). */
export const UNKNOWN_ADDRESS = "unknown";

/**
 * Parses `TRUSTED_PROXIES`: comma-separated addresses or CIDR blocks, IPv4 or IPv6
 * (`10.0.0.0/8, 127.0.0.1, fd00::/8`). Returns the list, or the entries that are not valid.
 */
export function parseTrustedProxies(
  text: string,
): { ok: true; blocks: string[] } | { ok: false; bad: string[] } {
  const blocks = text
    .split(",")
    .map((entry) => entry.trim())
    .filter(Boolean);
  const bad = blocks.filter((block) => {
    const [address, prefix, ...rest] = block.split("/");
    const family = isIP(address ?? "");
    if (family === 0 || rest.length > 0) return true;
    if (prefix === undefined) return false;
    const bits = Number(prefix);
    return !/^\d{1,3}$/.test(prefix) || bits > (family === 4 ? 32 : 128);
  });
  return bad.length > 0 ? { ok: false, bad } : { ok: true, blocks };
}

/** `::ffff:1.2.3.4` (an IPv4 client on a dual-stack socket) as `1.2.3.4`; IPv6 in lower case. */
function normalise(address: string): string {
  const lower = address.toLowerCase();
  return lower.startsWith("::ffff:") && isIP(lower.slice(7)) === 4 ? lower.slice(7) : lower;
}

/** The /64 network of an IPv6 address (`2001:db8:1:2::/64`): one client usually holds a whole /64. */
function ipv6Network(address: string): string {
  if (address.includes(".")) return address; // IPv4-embedded forms other than ::ffff: are rare: keep whole
  const [head, tail = ""] = address.split("::");
  const left = head ? head.split(":") : [];
  const right = address.includes("::") && tail ? tail.split(":") : [];
  const groups = address.includes("::")
    ? [...left, ...Array(8 - left.length - right.length).fill("0"), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ""))
    .join(":")}::/64`;
}

/**
 * Who a request comes from, for rate limits (docs/PROTOCOL.md; README, `TRUSTED_PROXIES`). The
 * connecting peer, unless it is a configured trusted proxy: then `X-Forwarded-For` is read from
 * the right, skipping trusted proxies, and the first address that is not one is the client (the
 * entries left of it were written by the client and prove nothing). IPv6 clients are keyed by
 * their /64, which one subscriber usually holds whole.
 */
export class ClientAddresses {
  private readonly trusted = new BlockList();
  private readonly trustsAny: boolean;

  /** `trustedProxies`: addresses or CIDR blocks as `parseTrustedProxies` accepts them. */
  constructor(trustedProxies: readonly string[] = []) {
    for (const block of trustedProxies) {
      const [address, prefix] = block.split("/");
      const type = isIP(address) === 4 ? "ipv4" : "ipv6";
      if (prefix === undefined) this.trusted.addAddress(address, type);
      else this.trusted.addSubnet(address, Number(prefix), type);
    }
    this.trustsAny = trustedProxies.length > 0;
  }

  private isTrusted(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.trusted.check(address, family === 4 ? "ipv4" : "ipv6");
  }

  /** The client's rate-limit key from the peer's address and the request's `X-Forwarded-For`. */
  resolve(peer: string | undefined, forwardedFor: string | null): string {
    if (!peer || isIP(peer) === 0) return UNKNOWN_ADDRESS;
    let client = normalise(peer);
    if (this.trustsAny && forwardedFor) {
      const hops = forwardedFor.split(",").map((hop) => hop.trim());
      while (this.isTrusted(client) && hops.length > 0) {
        const hop = hops.pop() as string;
        if (isIP(hop) === 0) break; // garbage: the last trusted hop is as far as we can see
        client = normalise(hop);
      }
    }
    return isIP(client) === 6 ? ipv6Network(client) : client;
  }

  /** The client address of a request served by `server`. */
  of(request: Request, server: PeerSource | null | undefined): string {
    return this.resolve(server?.requestIP(request)?.address, request.headers.get("x-forwarded-for"));
  }
}

/**
 * Adds the `clientAddress` route option: the route receives `clientAddress`, the key its rate
 * limits count under (`ClientAddresses.of`).
 */
export function clientAddressPlugin(addresses: ClientAddresses) {
  return new Elysia({ name: "clearbox.client-address" }).macro({
    clientAddress: {
      resolve({ request, server }): { clientAddress: string } {
        return { clientAddress: addresses.of(request, server) };
      },
    },
  });
}
