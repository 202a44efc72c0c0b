import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import type { TestNode } from "../support/node.ts";

/**
 * Makes the audit write fail for real on `node`'s database: a trigger on `audit_log` refuses the
 * actions named with `refuse` (the insert raises, so the transaction it runs in fails). `prefix`
 * names the table and function (unique per test file). `entries(action)` counts that action's
 * entries; `count(query)` reads one `n` from a query.
 */
export async function refusingAuditTrigger(node: TestNode, prefix: string) {
  const table = sql.raw(`${prefix}_refused`);
  const fn = sql.raw(`${prefix}_refuse`);
  const { db } = node.database;
  await db.execute(sql`create table ${table} (action text primary key)`);
  await db.execute(sql`
    create function ${fn}() returns trigger language plpgsql as $$
    begin
      if exists (select 1 from ${table} where action = new.action) then
        raise exception 'audit write refused by the test';
      end if;
      return new;
    end $$`);
  await db.execute(
    sql`create trigger ${fn} before insert on audit_log for each row execute function ${fn}()`,
  );

  async function count(query: ReturnType<typeof sql>): Promise<number> {
    const [row] = rowsOf<{ n: number }>(await db.execute(query));
    return Number(row?.n ?? 0);
  }
  return {
    /** Refuses `action`'s entries from now on (undefined: refuses none). */
    async refuse(action: string | undefined): Promise<void> {
      await db.execute(sql`delete from ${table}`);
      if (action) await db.execute(sql`insert into ${table} values (${action})`);
    },
    count,
    entries: (action: string) =>
      count(sql`select count(*)::int as n from audit_log where action = ${action}`),
  };
}
