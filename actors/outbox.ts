import type { Frame, Transport } from "./transport.ts";

interface Batch {
  frames: Frame[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Most frames in one transfer; a larger burst is split into several transfers. */
const MAX_FRAMES_PER_TRANSFER = 512;

/**
 * Collects frames per destination node during one iteration of the event loop and sends each node
 * one transfer: many envelopes to one node cost one broker round trip (Discord's Manifold idea).
 * Frames to the same node leave in the order they were queued.
 *
 * The flush runs from `setImmediate`, after the I/O callbacks of the iteration (every socket frame
 * and broker delivery read in it), not at the end of the first callback's microtasks: at the latter,
 * three spawned nodes under load sent 2.9 frames per transfer, at the former 12 (docs/BENCHMARKS.md
 * "Three nodes, stop 26"), and each transfer costs an encode, a publish, a confirm, a delivery and
 * an ack whatever it holds.
 */
export class Outbox {
  private readonly batches = new Map<string, Batch>();
  private scheduled = false;
  /** Transfers handed to the transport, their frames, and how those transfers ended (metrics). */
  readonly counts = { transfers: 0, frames: 0, confirmed: 0, failed: 0 };

  constructor(private readonly transport: Transport) {}

  /** Queues a frame; resolves when its transfer is confirmed, rejects with the transfer's error. */
  send(nodeId: string, frame: Frame): Promise<void> {
    let batch = this.batches.get(nodeId);
    if (!batch) {
      batch = this.newBatch();
      this.batches.set(nodeId, batch);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    }
    batch.frames.push(frame);
    const promise = batch.promise;
    if (batch.frames.length >= MAX_FRAMES_PER_TRANSFER) {
      this.batches.delete(nodeId);
      this.transmit(nodeId, batch);
    }
    return promise;
  }

  private newBatch(): Batch {
    let resolve!: () => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A sender may not wait on the promise; an unobserved rejection must not crash the process.
    promise.catch(() => undefined);
    return { frames: [], promise, resolve, reject };
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const batches = [...this.batches];
    this.batches.clear();
    for (const [nodeId, batch] of batches) this.transmit(nodeId, batch);
  };

  private transmit(nodeId: string, batch: Batch): void {
    const counts = this.counts;
    counts.transfers++;
    counts.frames += batch.frames.length;
    let sending: Promise<void>;
    try {
      sending = this.transport.send(nodeId, batch.frames);
    } catch (error) {
      // A transport that throws instead of rejecting (AmqpTransport's JSON encoding of a frame it
      // cannot encode) would throw out of the end-of-turn flush: an uncaught exception, the batch
      // never settled. Its senders get the error instead.
      sending = Promise.reject(error);
    }
    sending.then(
      () => {
        counts.confirmed++;
        batch.resolve();
      },
      (error: unknown) => {
        counts.failed++;
        batch.reject(error);
      },
    );
  }
}
