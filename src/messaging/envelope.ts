import type { StoredEnvelope } from "../../actors/index.ts";

/** One ciphertext addressed to one recipient device; the actors' port defines it, the stores keep it. */
export type { StoredEnvelope };
