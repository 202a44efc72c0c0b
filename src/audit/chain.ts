import { createHash } from "node:crypto";

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

/** JSON with object keys sorted at every level, so jsonb's own key order never changes a hash. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** hash = hex SHA-256 of `prevHash + "\n" + canonical content`. */
export function chainHash(prevHash: string, content: ChainContent): string {
  const canonical = canonicalJson({
    at: content.at,
    action: content.action,
    actor: content.actor,
    subject: content.subject,
    details: content.details,
  });
  return createHash("sha256").update(`${prevHash}\n${canonical}`).digest("hex");
}
