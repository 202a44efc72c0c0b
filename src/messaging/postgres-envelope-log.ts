import { and, asc, eq, inArray, isNotNull, lt, or } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { envelopes } from "../db/schema.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog, EnvelopeMetadata, EnvelopeState } from "./envelope-log.ts";
import { GroupCommit } from "./group-commit.ts";

/** Identity of a stored envelope: sender device, message id and recipient device. */
function identity(e: {
  senderUser: string;
  senderDevice: number;
  id: string;
  recipientUser: string;
  recipientDevice: number;
}): string {
  return `${e.senderUser}/${e.senderDevice}/${e.id}/${e.recipientUser}/${e.recipientDevice}`;
}

/** The envelope log in PostgreSQL or PGlite (drizzle), appending with group commit. */
export class PostgresEnvelopeLog implements EnvelopeLog {
  readonly kind = "postgres";
  private readonly commit: GroupCommit<StoredEnvelope, boolean>;

  constructor(private readonly db: Db) {
    this.commit = new GroupCommit((batch) => this.insert(batch));
  }

  append(batch: StoredEnvelope[]): Promise<boolean[]> {
    return this.commit.submit(batch);
  }

  private async insert(batch: StoredEnvelope[]): Promise<boolean[]> {
    const inserted = await this.db
      .insert(envelopes)
      .values(batch.map((e) => ({ ...e, body: Buffer.from(e.body, "base64"), state: "pending" as const })))
      .onConflictDoNothing()
      .returning({
        id: envelopes.id,
        senderUser: envelopes.senderUser,
        senderDevice: envelopes.senderDevice,
        recipientUser: envelopes.recipientUser,
        recipientDevice: envelopes.recipientDevice,
      });
    const fresh = new Set(inserted.map(identity));
    // The same envelope twice in one batch: only its first occurrence is new.
    const seen = new Set<string>();
    return batch.map((e) => {
      const key = identity(e);
      const isNew = fresh.has(key) && !seen.has(key);
      seen.add(key);
      return isNew;
    });
  }

  async undelivered(
    recipientUser: string,
    options: { device?: number; state?: EnvelopeState; limit?: number } = {},
  ): Promise<StoredEnvelope[]> {
    const rows = await this.db
      .select()
      .from(envelopes)
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          options.device === undefined ? undefined : eq(envelopes.recipientDevice, options.device),
          options.state === undefined
            ? inArray(envelopes.state, ["pending", "queued"])
            : eq(envelopes.state, options.state),
        ),
      )
      .orderBy(asc(envelopes.seq))
      .limit(options.limit ?? 10_000);
    return rows.map((r) => ({
      id: r.id,
      senderUser: r.senderUser,
      senderDevice: r.senderDevice,
      recipientUser: r.recipientUser,
      recipientDevice: r.recipientDevice,
      groupId: r.groupId,
      ts: r.ts,
      type: r.type,
      body: r.body ? Buffer.from(r.body).toString("base64") : "",
    }));
  }

  async markQueued(recipientUser: string, recipientDevice: number, ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.db
      .update(envelopes)
      .set({ state: "queued" })
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          eq(envelopes.recipientDevice, recipientDevice),
          inArray(envelopes.id, ids),
          eq(envelopes.state, "pending"),
        ),
      );
  }

  async ack(recipientUser: string, recipientDevice: number, ids: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    const acked = await this.db
      .update(envelopes)
      .set({ state: "acked", body: null })
      .where(
        and(
          eq(envelopes.recipientUser, recipientUser),
          eq(envelopes.recipientDevice, recipientDevice),
          inArray(envelopes.id, ids),
          isNotNull(envelopes.body),
        ),
      )
      .returning({ id: envelopes.id });
    return acked.length;
  }

  async metadataOf(userId: string, limit = 100_000): Promise<EnvelopeMetadata[]> {
    const rows = await this.db
      .select({
        id: envelopes.id,
        senderUser: envelopes.senderUser,
        senderDevice: envelopes.senderDevice,
        recipientUser: envelopes.recipientUser,
        recipientDevice: envelopes.recipientDevice,
        groupId: envelopes.groupId,
        ts: envelopes.ts,
        state: envelopes.state,
      })
      .from(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .orderBy(asc(envelopes.seq))
      .limit(limit);
    return rows;
  }

  async eraseUser(userId: string): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(or(eq(envelopes.senderUser, userId), eq(envelopes.recipientUser, userId)))
      .returning({ id: envelopes.id });
    return removed.length;
  }

  async eraseDevice(userId: string, deviceId: number): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(and(eq(envelopes.recipientUser, userId), eq(envelopes.recipientDevice, deviceId)))
      .returning({ id: envelopes.id });
    return removed.length;
  }

  async purgeBefore(before: number): Promise<number> {
    const removed = await this.db
      .delete(envelopes)
      .where(lt(envelopes.ts, before))
      .returning({ seq: envelopes.seq });
    return removed.length;
  }

  async close(): Promise<void> {}
}
