import { createHash } from "node:crypto";
import canonicalize from "canonicalize";

/** The prevHash of the very first entry of a chain that was never pruned. */
export const GENESIS_HASH = "0".repeat(64);

/** The fields an entry's hash covers (its seq and hashes are not part of its content). */
export interface ChainContent {
  at: string;
  action: string;
  actor: string;
  subject: string | null;
  details: Record<string, unknown>;
}

/**
 * hash = hex SHA-256 of the UTF-8 bytes of `prevHash + "\n" + JCS({at, action, actor, subject, details})`,
 * JCS being RFC 8785 (sorted keys, no whitespace, ECMAScript numbers), so jsonb's own key order
 * never changes a hash and anyone can recompute one with any JCS implementation.
 * Throws on what JCS refuses (NaN, Infinity, lone surrogates): such an entry could not be verified.
 */
export function chainHash(prevHash: string, content: ChainContent): string {
  const canonical = canonicalize({
    at: content.at,
    action: content.action,
    actor: content.actor,
    subject: content.subject,
    details: content.details,
  }) as string; // an object always serialises
  return createHash("sha256").update(`${prevHash}\n${canonical}`).digest("hex");
}
