import { stageTraceOn, traceEvent } from "../observability/stage-trace.ts";

/** Told after every write of a group commit: how many items it carried and how long it took (seconds). */
export type CommitObserver = (items: number, seconds: number) => void;

/**
 * What a log tells about its group commits, by the write they carry (`append`, `ack`, `mark_queued`;
 * `write` for the embedded log, whose single writer commits every kind together).
 */
export type CommitListener = (operation: string, items: number, seconds: number) => void;

/**
 * The per-operation observer of `listener` (created once per GroupCommit, not per write). With the
 * stage trace on, every write is also traced as `<operation> <items>` and `<operation>ms <ms>`.
 */
export function commitObserver(
  listener: CommitListener | undefined,
  operation: string,
): CommitObserver | undefined {
  if (stageTraceOn)
    return (items, seconds) => {
      traceEvent(operation, items);
      traceEvent(`${operation}ms`, seconds * 1000);
      listener?.(operation, items, seconds);
    };
  return listener && ((items, seconds) => listener(operation, items, seconds));
}

interface Waiting<T, R> {
  items: T[];
  resolve: (results: R[]) => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit: callers submit small batches; while one write is in flight the next ones gather,
 * and are written together as soon as it completes. One write at a time keeps acceptance order
 * equal to commit order, which is what per-sender ordering relies on.
 */
export class GroupCommit<T, R> {
  private waiting: Waiting<T, R>[] = [];
  private waitingItems = 0;
  private writing = false;
  private idle: (() => void)[] = [];

  constructor(
    private readonly write: (items: T[]) => Promise<R[]>,
    private readonly maxBatch = 1000,
    private readonly observe?: CommitObserver,
  ) {}

  /** Resolves with one result per item once the write that carried them has committed. */
  submit(items: T[]): Promise<R[]> {
    if (items.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      this.waiting.push({ items, resolve, reject });
      this.waitingItems += items.length;
      if (!this.writing) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.writing = true;
    while (this.waiting.length > 0) {
      const batch: Waiting<T, R>[] = [];
      let count = 0;
      // Whole submissions only: a caller's items commit together or not at all.
      while (
        this.waiting.length > 0 &&
        (count === 0 || count + this.waiting[0].items.length <= this.maxBatch)
      ) {
        const next = this.waiting.shift() as Waiting<T, R>;
        batch.push(next);
        count += next.items.length;
      }
      this.waitingItems -= count;
      const started = performance.now();
      try {
        const results = await this.write(batch.flatMap((w) => w.items));
        this.observe?.(count, (performance.now() - started) / 1000);
        let offset = 0;
        for (const w of batch) {
          w.resolve(results.slice(offset, offset + w.items.length));
          offset += w.items.length;
        }
      } catch (error) {
        for (const w of batch) w.reject(error);
      }
    }
    this.writing = false;
    for (const resolve of this.idle.splice(0)) resolve();
  }

  /**
   * Resolves once nothing is waiting or being written: every item submitted before the call (and
   * while it waits) has been written or has failed. At once when idle. Never rejects.
   */
  settled(): Promise<void> {
    if (!this.writing && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /** Items waiting for the next write (for metrics). */
  get backlog(): number {
    return this.waitingItems;
  }
}
