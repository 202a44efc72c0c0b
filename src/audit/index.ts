export { chainHash, GENESIS_HASH } from "./chain.ts";
export { buildRopa, type Ropa, type RopaConfig } from "./ropa.ts";
export { auditAdminRoutes, parseAuditQuery } from "./routes.ts";
export {
  type AuditPruneResult,
  type AuditQuery,
  type AuditVerification,
  PostgresAuditTrail,
} from "./service.ts";
export type { AuditActor, AuditEntry, AuditEvent, AuditTrail } from "./types.ts";
