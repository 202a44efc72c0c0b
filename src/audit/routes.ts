import { Elysia, t } from "elysia";
import { DomainError } from "../errors/index.ts";
import { canonicalUuid } from "../protocol/ids.ts";
import type { Ropa } from "./ropa.ts";
import type { AuditHead, AuditQuery, PostgresAuditTrail } from "./service.ts";

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;

/** A positive integer within bounds, or `invalid` naming the parameter. */
function integer(value: string, name: string, min: number, max: number): number {
  if (!/^\d{1,16}$/.test(value)) throw new DomainError("invalid", `${name}: expected an integer`);
  const n = Number(value);
  if (n < min || n > max) throw new DomainError("invalid", `${name}: expected ${min}-${max}`);
  return n;
}

/** `since` as Unix milliseconds (docs/PROTOCOL.md's times) or an ISO-8601 timestamp. */
function instant(value: string, name = "since"): Date {
  const at = /^\d{1,15}$/.test(value)
    ? new Date(Number(value))
    : /^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(value)
      ? new Date(value)
      : new Date(Number.NaN);
  if (Number.isNaN(at.getTime())) {
    throw new DomainError("invalid", `${name}: expected Unix milliseconds or an ISO-8601 timestamp`);
  }
  return at;
}

/** Parses the listing's query string; every bad value is `invalid` before anything is read. */
export function parseAuditQuery(query: Record<string, string | undefined>): AuditQuery {
  const parsed: AuditQuery = { limit: DEFAULT_LIMIT };
  if (query.subject !== undefined) {
    const subject = canonicalUuid(query.subject);
    if (!subject) throw new DomainError("invalid", "subject: expected a user id (UUID)");
    parsed.subject = subject;
  }
  if (query.since !== undefined) parsed.since = instant(query.since);
  if (query.after !== undefined) parsed.after = integer(query.after, "after", 0, Number.MAX_SAFE_INTEGER);
  if (query.limit !== undefined) parsed.limit = integer(query.limit, "limit", 1, MAX_LIMIT);
  return parsed;
}

/**
 * The `seq`, `hash` and `at` of `GET /admin/v1/audit/verify`: `seq` and `hash` both (a `head` an
 * earlier verification answered, kept outside the database) or neither, `at` (the head's, ISO-8601
 * or Unix milliseconds) only with them; anything else is `invalid`.
 */
export function parseKnownHead(query: Record<string, string | undefined>): AuditHead | undefined {
  if (query.seq === undefined && query.hash === undefined) {
    if (query.at !== undefined) throw new DomainError("invalid", "at: only with seq and hash");
    return undefined;
  }
  if (query.seq === undefined || query.hash === undefined) {
    throw new DomainError(
      "invalid",
      "seq and hash: give both (a head an earlier verification answered), or neither",
    );
  }
  const seq = integer(query.seq, "seq", 1, Number.MAX_SAFE_INTEGER);
  if (!/^[0-9a-f]{64}$/.test(query.hash))
    throw new DomainError("invalid", "hash: expected 64 lower-case hex digits");
  if (query.at === undefined) return { seq, hash: query.hash };
  return { seq, hash: query.hash, at: instant(query.at, "at").toISOString() };
}

/**
 * Admin routes for the audit trail and the Art. 30 record: `GET /admin/v1/audit`,
 * `GET /admin/v1/audit/verify`, `GET /admin/v1/ropa`. Mounted inside the admin listener, which
 * authenticates and audits every call.
 */
export function auditAdminRoutes(deps: { audit: PostgresAuditTrail; ropa: () => Ropa }) {
  const optional = t.Optional(t.String());
  return new Elysia({ name: "clearbox.audit-admin" })
    .get(
      "/admin/v1/audit",
      async ({ query }) => {
        const parsed = parseAuditQuery(query);
        const entries = await deps.audit.list(parsed);
        const next = entries.length === parsed.limit ? entries[entries.length - 1].seq : undefined;
        return { entries, ...(next === undefined ? {} : { nextAfter: next }) };
      },
      { query: t.Object({ subject: optional, since: optional, after: optional, limit: optional }) },
    )
    .get("/admin/v1/audit/verify", ({ query }) => deps.audit.verify(parseKnownHead(query)), {
      query: t.Object({ seq: optional, hash: optional, at: optional }),
    })
    .get("/admin/v1/ropa", () => deps.ropa());
}
