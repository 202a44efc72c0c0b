import { sql } from "drizzle-orm";
import type { Db } from "../../src/db/index.ts";

/** Every audit row as stored, in seq order. */
export async function auditRows(db: Db) {
  const result = await db.execute(sql`select * from audit_log order by seq`);
  // postgres-js returns the rows array itself, PGlite an object holding them.
  const rows = Array.isArray(result) ? result : (result as unknown as { rows: unknown[] }).rows;
  return rows as {
    seq: number | string;
    action: string;
    actor: string;
    subject: string | null;
    details: unknown;
  }[];
}

/** A single number from a count query, on either driver. */
export async function countOf(db: Db, query: ReturnType<typeof sql>): Promise<number> {
  const result = await db.execute(query);
  const rows = Array.isArray(result) ? result : (result as unknown as { rows: unknown[] }).rows;
  return Number(Object.values(rows[0] as Record<string, unknown>)[0]);
}

/**
 * What an attacker with the database superuser can do: switch the append-only trigger off for one
 * transaction and change rows behind the chain's back.
 */
export async function asSuperuser(db: Db, statement: ReturnType<typeof sql>): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.execute(sql`alter table audit_log disable trigger audit_log_no_update_delete`);
    await tx.execute(statement);
    await tx.execute(sql`alter table audit_log enable trigger audit_log_no_update_delete`);
  });
}

/** Polls until `check` returns a value, for effects that land just after a reply. */
export async function eventually<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await Bun.sleep(25);
  }
}
