/** Told after every write of a group commit: how many items it carried and how long it took (seconds). */
export type CommitObserver = (items: number, seconds: number) => void;

/**
 * What a log tells about its group commits, by the write they carry (`append`, `ack`, `mark_queued`;
 * `write` for the embedded log, whose single writer commits every kind together).
 */
export type CommitListener = (operation: string, items: number, seconds: number) => void;

/** The per-operation observer of `listener` (created once per GroupCommit, not per write). */
export function commitObserver(
  listener: CommitListener | undefined,
  operation: string,
): CommitObserver | undefined {
  return listener && ((items, seconds) => listener(operation, items, seconds));
}

interface Waiting<T, R> {
  items: T[];
  /** The submission's ordering keys (`GroupCommitOptions.keyOf`), empty without one. */
  keys: string[];
  resolve: (results: R[]) => void;
  reject: (error: unknown) => void;
}

/** How a GroupCommit may overlap its writes. */
export interface GroupCommitOptions<T> {
  /** Writes in flight at once (default 1: each waits for the one before it). */
  maxInFlight?: number;
  /**
   * The ordering key of an item (e.g. its sender). With more than one write in flight, a write
   * never carries a key that a write still in flight carries: items of one key are written, and
   * their promises settle, one write after another, in submission order; items of different keys
   * may commit in either order.
   */
  keyOf?: (item: T) => string;
}

/**
 * Group commit: callers submit small batches; while a write is in flight the next ones gather,
 * and are written together as soon as it completes. One write at a time (the default) keeps
 * acceptance order equal to commit order. With `maxInFlight` > 1 and a `keyOf`, the next write
 * starts while earlier ones commit, but only with submissions whose keys none of those carries,
 * so order per key (per sender) is still commit order, and a crash never leaves a later item of a
 * key committed without an earlier one.
 */
export class GroupCommit<T, R> {
  private waiting: Waiting<T, R>[] = [];
  private waitingItems = 0;
  private inFlight = 0;
  /** Keys carried by writes in flight, with how many of those writes carry each. */
  private readonly busyKeys = new Map<string, number>();
  private readonly maxInFlight: number;
  private readonly keyOf: ((item: T) => string) | undefined;

  constructor(
    private readonly write: (items: T[]) => Promise<R[]>,
    private readonly maxBatch = 1000,
    private readonly observe?: CommitObserver,
    options: GroupCommitOptions<T> = {},
  ) {
    this.keyOf = options.keyOf;
    // Without keys there is nothing to keep apart: one write at a time.
    this.maxInFlight = this.keyOf ? Math.max(1, options.maxInFlight ?? 1) : 1;
  }

  /** Resolves with one result per item once the write that carried them has committed. */
  submit(items: T[]): Promise<R[]> {
    if (items.length === 0) return Promise.resolve([]);
    const keys = this.keyOf ? [...new Set(items.map(this.keyOf))] : [];
    return new Promise((resolve, reject) => {
      this.waiting.push({ items, keys, resolve, reject });
      this.waitingItems += items.length;
      this.startWrites();
    });
  }

  /** Starts writes while fewer than maxInFlight are in flight and a submission may go. */
  private startWrites(): void {
    while (this.inFlight < this.maxInFlight && this.waiting.length > 0) {
      const batch = this.takeBatch();
      if (batch.length === 0) return;
      void this.run(batch);
    }
  }

  /**
   * Whole submissions only (a caller's items commit together or not at all), oldest first, up to
   * maxBatch items; a submission with a key of a write in flight stays, and so do the later ones
   * of that key, behind it.
   */
  private takeBatch(): Waiting<T, R>[] {
    const batch: Waiting<T, R>[] = [];
    const rest: Waiting<T, R>[] = [];
    /** Keys of submissions left behind: later ones of those keys stay behind them. */
    const held = new Set<string>();
    let count = 0;
    let full = false;
    for (const next of this.waiting) {
      full ||= count > 0 && count + next.items.length > this.maxBatch;
      if (!full && !next.keys.some((key) => this.busyKeys.has(key) || held.has(key))) {
        batch.push(next);
        count += next.items.length;
      } else {
        rest.push(next);
        for (const key of next.keys) held.add(key);
      }
    }
    this.waiting = rest;
    this.waitingItems -= count;
    return batch;
  }

  private async run(batch: Waiting<T, R>[]): Promise<void> {
    this.inFlight++;
    const keys = batch.flatMap((w) => w.keys);
    for (const key of keys) this.busyKeys.set(key, (this.busyKeys.get(key) ?? 0) + 1);
    const count = batch.reduce((n, w) => n + w.items.length, 0);
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
    } finally {
      for (const key of keys) {
        const left = (this.busyKeys.get(key) ?? 1) - 1;
        if (left === 0) this.busyKeys.delete(key);
        else this.busyKeys.set(key, left);
      }
      this.inFlight--;
      this.startWrites();
    }
  }

  /** Items waiting for the next write (for metrics). */
  get backlog(): number {
    return this.waitingItems;
  }
}
