import { IdentityKeyPair } from "@signalapp/libsignal-client";
import { sql } from "drizzle-orm";
import type { KeyUpload } from "../../src/client/http.ts";
import { generateFullUpload } from "../../src/client/keys.ts";
import { AccountStore } from "../../src/client/store.ts";
import type { TestNode } from "../support/node.ts";

/** A valid key upload for a fresh identity, with `oneTime` one-time keys of each kind. */
export async function validUpload(oneTime = 100): Promise<{ upload: KeyUpload; identity: IdentityKeyPair }> {
  const store = new AccountStore(":memory:");
  try {
    const identity = IdentityKeyPair.generate();
    return { upload: await generateFullUpload(store, identity, oneTime), identity };
  } finally {
    store.close();
  }
}

/** The same base64 value with one bit of its last byte flipped. */
export function flipLastBit(value: string): string {
  const bytes = Buffer.from(value, "base64");
  bytes[bytes.length - 1] ^= 1;
  return bytes.toString("base64");
}

export const KEY_TABLES = [
  "identity_keys",
  "signed_pre_keys",
  "kyber_last_resort_keys",
  "one_time_pre_keys",
  "one_time_kyber_pre_keys",
] as const;

/** Row counts of every key table, to prove a refused request stored nothing. */
export async function keyRowCounts(node: TestNode): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const table of KEY_TABLES) {
    const result: any = await node.database.db.execute(sql.raw(`select count(*)::int as n from ${table}`));
    counts[table] = (result.rows ?? result)[0].n;
  }
  return counts;
}
