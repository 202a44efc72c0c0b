/** One deadline of a `FixedDeadlines`: `cancel` it once what it guards is done. */
export interface Deadline {
  cancel(): void;
}

interface Entry extends Deadline {
  /** When it fires (`performance.now()` ms). */
  at: number;
  /** What it runs; undefined once cancelled or fired. */
  fire: (() => void) | undefined;
}

/**
 * Deadlines that all last the same `ms` milliseconds, so they fall due in the order they were set:
 * a FIFO with one timer for the earliest live one, instead of a `setTimeout` and a `clearTimeout`
 * per deadline (three per 1:1 send before this: the send's deadline, `accepted`'s wait and the
 * deliver's ask timeout, about 4 % of the embedded node's flat-out profile; docs/BENCHMARKS.md,
 * "Embedded 1:1, stop 26").
 * Cancelling drops the entry, and every cancelled one before the first live one, at once, so what
 * is kept is bounded by the oldest deadline still running. A deadline fires no earlier than `ms`
 * after it was set, and like a timer of its own may fire later when the event loop is busy.
 */
export class FixedDeadlines {
  private entries: (Entry | undefined)[] = [];
  private head = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** When the armed timer fires (`performance.now()` ms). */
  private timerAt = Number.POSITIVE_INFINITY;

  constructor(private readonly ms: number) {}

  /** Runs `fire` in `ms` milliseconds unless the returned deadline is cancelled first. */
  add(fire: () => void): Deadline {
    const entry: Entry = {
      at: performance.now() + this.ms,
      fire,
      cancel: () => {
        if (entry.fire === undefined) return;
        entry.fire = undefined;
        this.dropCancelled();
      },
    };
    this.entries.push(entry);
    if (this.timer === undefined) this.arm(entry.at);
    return entry;
  }

  /** Deadlines set and not yet fired or cancelled, plus cancelled ones behind a live one (tests). */
  get size(): number {
    return this.entries.length - this.head;
  }

  /** Stops the timer; deadlines not fired yet never fire. */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    this.entries = [];
    this.head = 0;
  }

  private arm(at: number): void {
    this.timer = setTimeout(this.tick, Math.max(0, at - performance.now()));
    this.timerAt = at;
  }

  private dropCancelled(): void {
    const { entries } = this;
    while (this.head < entries.length && entries[this.head]?.fire === undefined) {
      entries[this.head] = undefined;
      this.head++;
    }
    if (this.head === entries.length) {
      this.entries = [];
      this.head = 0;
      clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Number.POSITIVE_INFINITY;
    } else if (this.head >= 1024 && this.head * 2 >= entries.length) {
      this.entries = entries.slice(this.head);
      this.head = 0;
    }
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    for (;;) {
      this.dropCancelled();
      const next = this.entries[this.head];
      if (next === undefined) return;
      if (next.at > now) {
        if (this.timer === undefined || next.at < this.timerAt) {
          clearTimeout(this.timer);
          this.arm(next.at);
        }
        return;
      }
      const fire = next.fire;
      next.fire = undefined;
      fire?.();
    }
  };
}

/**
 * Waits for `work`, but at most `ms` milliseconds: resolves true once it fulfilled in time, false
 * when the wait ran out first (`work` goes on; its outcome is then nobody's here), and rejects with
 * `work`'s error when it rejected in time. The timer is cleared either way. For the waits that
 * must not hold a reply or a stop for long (a publish, revoked sockets' closes, a broker's close,
 * replayed erasures).
 */
export async function settledWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([work.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}
