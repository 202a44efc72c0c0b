import { asc, inArray } from "drizzle-orm";
import type { EnvelopeRef } from "../../actors/index.ts";
import type { Db } from "../db/index.ts";
import { envelopes } from "../db/schema.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog } from "./envelope-log.ts";
import { toStoredEnvelope } from "./postgres-envelope-log.ts";

const BATCH = 5000;

/**
 * Moves the envelope rows an older embedded data directory kept in PGlite into the SQLite log
 * (the embedded log moved there), oldest first, with their state: queued ones marked queued,
 * acked ones acked (metadata only). Each batch is deleted from PGlite once the log has it, so an
 * interrupted move resumes where it stopped and a row is never in neither. Returns how many moved.
 */
export async function adoptPgliteLog(db: Db, log: EnvelopeLog): Promise<number> {
  let moved = 0;
  for (;;) {
    const rows = await db.select().from(envelopes).orderBy(asc(envelopes.seq)).limit(BATCH);
    if (rows.length === 0) return moved;
    const batch: StoredEnvelope[] = rows.map(toStoredEnvelope);
    await log.append(batch);
    for (const state of ["queued", "acked"] as const) {
      // Each row by id and sender device: another sender's row with the same id keeps its own state.
      const byDevice = new Map<string, { user: string; device: number; envelopes: EnvelopeRef[] }>();
      for (const r of rows) {
        if (r.state !== state) continue;
        const key = `${r.recipientUser}/${r.recipientDevice}`;
        const entry = byDevice.get(key) ?? {
          user: r.recipientUser,
          device: r.recipientDevice,
          envelopes: [],
        };
        entry.envelopes.push({ id: r.id, senderUser: r.senderUser, senderDevice: r.senderDevice });
        byDevice.set(key, entry);
      }
      for (const { user, device, envelopes: refs } of byDevice.values()) {
        if (state === "queued") await log.markQueued(user, device, refs);
        else await log.ack(user, device, refs);
      }
    }
    await db.delete(envelopes).where(
      inArray(
        envelopes.seq,
        rows.map((r) => r.seq),
      ),
    );
    moved += rows.length;
  }
}
