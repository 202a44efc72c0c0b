import type { EnvelopeRef, GroupEnvelope } from "../../actors/index.ts";
import type { StoredEnvelope } from "./envelope.ts";

/** One write the embedded log's writer thread applies; a batch of them is one transaction. */
export type LogWrite =
  | { op: "append"; envelopes: StoredEnvelope[] }
  /** One group send, stored once; `recipients` is userId → device ids. Answers whether it was new. */
  | { op: "appendGroup"; message: GroupEnvelope; recipients: Record<string, number[]> }
  /**
   * Writes the per-device rows of every unexpanded group message; with `olderThan` (Unix ms) only
   * when one accepted before then is among them, answering what was written (ExpandedGroupMessage[]).
   */
  | { op: "expand"; olderThan?: number }
  | { op: "ack"; recipientUser: string; recipientDevice: number; envelopes: readonly EnvelopeRef[] }
  | { op: "queued"; recipientUser: string; recipientDevice: number; envelopes: readonly EnvelopeRef[] }
  | { op: "eraseUser"; userId: string }
  | { op: "eraseDevice"; userId: string; deviceId: number }
  | { op: "purgeBefore"; before: number };

/**
 * Messages from the server's thread to the writer (sqlite-log-worker.ts). Both directions travel
 * as JSON text (`JSON.stringify`, then `postMessage` of the string): a string is copied as one
 * block, where the structured clone of a group commit's batch walks every envelope object, and
 * the post of each commit was 9 % of the embedded node's flat-out profile (docs/BENCHMARKS.md,
 * "Embedded 1:1, stop 26"). Every value here is JSON-safe (strings, numbers, booleans, null,
 * arrays, plain objects); a write whose result is `undefined` arrives as `null`.
 */
export type LogWorkerRequest =
  | { kind: "open"; seq: number; path: string }
  /** `sentAt`: with the stage trace on, when the request was posted (`performance.timeOrigin + now()`, ms). */
  | { kind: "write"; seq: number; ops: LogWrite[]; sentAt?: number }
  /** A consistent copy of the log into a new file (`VACUUM INTO`), between two write transactions. */
  | { kind: "backup"; seq: number; path: string }
  | { kind: "close"; seq: number };

/**
 * The writer's answer to one request (as JSON text): one result per write, in order, or why the
 * transaction failed. An answer with `seq` 0 is to a request that could not be parsed.
 */
export type LogWorkerReply =
  | { seq: number; ok: true; results: unknown[]; trace?: WriteTrace }
  | { seq: number; ok: false; error: string };

/**
 * Where one traced write's time went on the writer thread (only when the request carried `sentAt`;
 * ms): `queue` from posting to the writer starting it, `statements` running its statements, `commit`
 * the COMMIT (the WAL fsync, and an automatic checkpoint when the commit crossed its threshold), `ran`
 * / `waited` the writer thread on a CPU / in a run queue over the write (Linux schedstat), and
 * `doneAt` when it finished, for the reply's own latency.
 */
export interface WriteTrace {
  queue: number;
  statements: number;
  commit: number;
  ran: number;
  waited: number;
  doneAt: number;
}
