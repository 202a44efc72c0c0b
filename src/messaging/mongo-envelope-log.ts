import { type Collection, MongoBulkWriteError, MongoClient, type Db as MongoDb } from "mongodb";
import { type EnvelopeRef, envelopeKey, type GroupEnvelope } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type {
  EnvelopeLog,
  EnvelopeMetadata,
  EnvelopeState,
  ExpandedGroupMessage,
  LogPage,
  QueuedKey,
  QueuedRow,
} from "./envelope-log.ts";
import { type CommitListener, commitObserver, GroupCommit } from "./group-commit.ts";

/** A stored envelope as MongoDB keeps it: binary ciphertext (null once acked), order and state. */
interface EnvelopeDoc extends Omit<StoredEnvelope, "body"> {
  _id: string;
  seq: number;
  /** Date twin of `ts` for the TTL index that enforces retention. */
  acceptedAt: Date;
  body: Buffer | null;
  state: EnvelopeState | "acked";
}

/** A document's `_id`: the envelope's identity, sender device and id then recipient device. */
function documentId(e: EnvelopeRef, recipientUser: string, recipientDevice: number): string {
  return `${envelopeKey(e)}/${recipientUser}/${recipientDevice}`;
}

/** The `_id`s of these envelopes of one recipient device: an ack or mark reaches exactly them. */
function documentIds(recipientUser: string, recipientDevice: number, refs: readonly EnvelopeRef[]): string[] {
  return refs.map((e) => documentId(e, recipientUser, recipientDevice));
}

/** A document as `undelivered` answers it: base64 ciphertext ("" once acked). */
function toEnvelope(d: EnvelopeDoc): StoredEnvelope {
  return {
    id: d.id,
    senderUser: d.senderUser,
    senderDevice: d.senderDevice,
    recipientUser: d.recipientUser,
    recipientDevice: d.recipientDevice,
    groupId: d.groupId,
    ts: d.ts,
    type: d.type,
    body: d.body ? d.body.toString("base64") : "",
  };
}

/** A document (read without its `body`) as `metadataOf` answers it. */
function toMetadata(d: Omit<EnvelopeDoc, "body"> | EnvelopeDoc): EnvelopeMetadata {
  const { id, senderUser, senderDevice, recipientUser, recipientDevice, groupId, ts, state } = d;
  return { id, senderUser, senderDevice, recipientUser, recipientDevice, groupId, ts, state };
}

/**
 * The envelope log in MongoDB (official driver): journaled writes, a TTL index for retention.
 * A group send is written as one document per member device before `accepted` (the eager way the
 * other logs replaced with one row per send and a later expansion: docs/MESSAGING.md), so there is
 * never anything to expand.
 */
export class MongoEnvelopeLog implements EnvelopeLog {
  readonly kind = "mongodb";
  readonly commitOperations = ["append"] as const;
  private readonly commit: GroupCommit<StoredEnvelope, boolean>;

  private constructor(
    private readonly client: MongoClient,
    private readonly envelopes: Collection<EnvelopeDoc>,
    private readonly counters: Collection<{ _id: string; value: number }>,
    onCommit?: CommitListener,
  ) {
    this.commit = new GroupCommit(
      (batch) => this.insert(batch),
      undefined,
      commitObserver(onCommit, "append"),
    );
  }

  /** Connects, and creates the indexes (TTL = retention) when missing. */
  static async open(
    url: string,
    options: { retentionDays: number; database?: string; onCommit?: CommitListener },
  ): Promise<MongoEnvelopeLog> {
    // promoteBuffers: ciphertexts come back as Buffers rather than BSON Binary.
    const client = await MongoClient.connect(url, {
      writeConcern: { w: "majority", journal: true },
      promoteBuffers: true,
    });
    const db: MongoDb = client.db(options.database);
    const envelopes = db.collection<EnvelopeDoc>("envelopes");
    await envelopes.createIndexes([
      { key: { recipientUser: 1, recipientDevice: 1, seq: 1 } },
      { key: { senderUser: 1 } },
      { key: { acceptedAt: 1 }, expireAfterSeconds: options.retentionDays * 86_400, name: "retention" },
    ]);
    return new MongoEnvelopeLog(client, envelopes, db.collection("counters"), options.onCommit);
  }

  append(batch: StoredEnvelope[]): Promise<boolean[]> {
    return this.commit.submit(batch);
  }

  /** One document per recipient device, through the group commit; new when any of them was. */
  async appendGroup(message: GroupEnvelope, recipients: Record<string, number[]>): Promise<boolean> {
    const envelopes: StoredEnvelope[] = [];
    for (const [recipientUser, devices] of Object.entries(recipients)) {
      for (const recipientDevice of devices) envelopes.push({ ...message, recipientUser, recipientDevice });
    }
    const fresh = await this.commit.submit(envelopes);
    return fresh.some((isNew) => isNew);
  }

  /** Group messages are written whole by `appendGroup`: nothing is ever left to expand. */
  async expandStale(_olderThanMs: number): Promise<ExpandedGroupMessage[]> {
    return [];
  }

  private async insert(batch: StoredEnvelope[]): Promise<boolean[]> {
    // Reserve a block of sequence numbers so order across nodes follows commit order of the reservation.
    const counter = await this.counters.findOneAndUpdate(
      { _id: "envelopes" },
      { $inc: { value: batch.length } },
      { upsert: true, returnDocument: "after" },
    );
    const first = (counter?.value ?? batch.length) - batch.length;
    const docs: EnvelopeDoc[] = batch.map((e, i) => ({
      _id: documentId(e, e.recipientUser, e.recipientDevice),
      seq: first + i,
      id: e.id,
      senderUser: e.senderUser,
      senderDevice: e.senderDevice,
      recipientUser: e.recipientUser,
      recipientDevice: e.recipientDevice,
      groupId: e.groupId,
      ts: e.ts,
      acceptedAt: new Date(e.ts),
      type: e.type,
      body: Buffer.from(e.body, "base64"),
      state: "pending",
    }));
    const results = batch.map(() => true);
    try {
      await this.envelopes.insertMany(docs, { ordered: false });
    } catch (error) {
      if (!(error instanceof MongoBulkWriteError)) throw error;
      const writeErrors = Array.isArray(error.writeErrors) ? error.writeErrors : [error.writeErrors];
      for (const writeError of writeErrors) {
        if (writeError.code !== 11000) throw error;
        results[writeError.index] = false;
      }
    }
    return results;
  }

  async undelivered(
    recipientUser: string,
    options: { device?: number; state?: EnvelopeState; limit?: number } = {},
  ): Promise<StoredEnvelope[]> {
    const docs = await this.envelopes
      .find({
        recipientUser,
        ...(options.device === undefined ? {} : { recipientDevice: options.device }),
        state: options.state ?? { $in: ["pending", "queued"] },
      })
      .sort({ seq: 1 })
      .limit(options.limit ?? 10_000)
      .toArray();
    return docs.map(toEnvelope);
  }

  async queuedAfter(
    recipientUser: string,
    recipientDevice: number,
    after: number | null,
    limit: number,
  ): Promise<QueuedRow[]> {
    const docs = await this.envelopes
      .find({
        recipientUser,
        recipientDevice,
        state: "queued",
        ...(after === null ? {} : { seq: { $gt: after } }),
      })
      .sort({ seq: 1 })
      .limit(limit)
      .toArray();
    return docs.map((d) => ({ cursor: d.seq, envelope: toEnvelope(d) }));
  }

  async queuedKeys(recipientUser: string, recipientDevice: number, through: number): Promise<QueuedKey[]> {
    const docs = await this.envelopes
      .find(
        { recipientUser, recipientDevice, state: "queued", seq: { $lte: through } },
        { projection: { seq: 1, id: 1, senderUser: 1, senderDevice: 1 } },
      )
      .sort({ seq: 1 })
      .toArray();
    return docs.map((d) => ({
      cursor: d.seq,
      id: d.id,
      senderUser: d.senderUser,
      senderDevice: d.senderDevice,
    }));
  }

  async markQueued(
    recipientUser: string,
    recipientDevice: number,
    refs: readonly EnvelopeRef[],
  ): Promise<void> {
    if (refs.length === 0) return;
    await this.envelopes.updateMany(
      { _id: { $in: documentIds(recipientUser, recipientDevice, refs) }, state: "pending" },
      { $set: { state: "queued" } },
    );
  }

  async ack(recipientUser: string, recipientDevice: number, refs: readonly EnvelopeRef[]): Promise<number> {
    if (refs.length === 0) return 0;
    const result = await this.envelopes.updateMany(
      { _id: { $in: documentIds(recipientUser, recipientDevice, refs) }, state: { $ne: "acked" } },
      { $set: { state: "acked", body: null } },
    );
    return result.modifiedCount;
  }

  async metadataOf(userId: string, limit = 100_000): Promise<EnvelopeMetadata[]> {
    const docs = await this.envelopes
      .find({ $or: [{ senderUser: userId }, { recipientUser: userId }] }, { projection: { body: 0 } })
      .sort({ seq: 1 })
      .limit(limit)
      .toArray();
    return docs.map(toMetadata);
  }

  async undeliveredPage(
    recipientUser: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<StoredEnvelope>> {
    const docs = await this.envelopes
      .find({
        recipientUser,
        state: { $in: ["pending", "queued"] },
        ...(after === null ? {} : { seq: { $gt: after } }),
      })
      .sort({ seq: 1 })
      .limit(limit)
      .toArray();
    return {
      rows: docs.map(toEnvelope),
      next: docs.length >= limit ? (docs.at(-1)?.seq ?? null) : null,
    };
  }

  async metadataPage(
    userId: string,
    after: number | null,
    limit: number,
  ): Promise<LogPage<EnvelopeMetadata>> {
    const docs = await this.envelopes
      .find(
        {
          $or: [{ senderUser: userId }, { recipientUser: userId }],
          ...(after === null ? {} : { seq: { $gt: after } }),
        },
        { projection: { body: 0 } },
      )
      .sort({ seq: 1 })
      .limit(limit)
      .toArray();
    return {
      rows: docs.map(toMetadata),
      next: docs.length >= limit ? (docs.at(-1)?.seq ?? null) : null,
    };
  }

  async queuedRecipientsOf(senderUser: string): Promise<{ userId: string; deviceId: number }[]> {
    const groups = await this.envelopes
      .aggregate<{ _id: { userId: string; deviceId: number } }>([
        { $match: { senderUser, state: "queued", recipientUser: { $ne: senderUser } } },
        { $group: { _id: { userId: "$recipientUser", deviceId: "$recipientDevice" } } },
      ])
      .toArray();
    return groups.map((group) => group._id);
  }

  async eraseUser(userId: string): Promise<number> {
    const result = await this.envelopes.deleteMany({
      $or: [{ senderUser: userId }, { recipientUser: userId }],
    });
    return result.deletedCount;
  }

  async eraseDevice(userId: string, deviceId: number): Promise<number> {
    const result = await this.envelopes.deleteMany({ recipientUser: userId, recipientDevice: deviceId });
    return result.deletedCount;
  }

  async purgeBefore(before: number): Promise<number> {
    const result = await this.envelopes.deleteMany({ ts: { $lt: before } });
    return result.deletedCount;
  }

  /** Resolves when the server answers (readiness). */
  async ping(): Promise<void> {
    await this.client.db("admin").command({ ping: 1 });
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
