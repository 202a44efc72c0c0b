/**
 * Bounded FIFO an actor drains one message at a time.
 * A ring buffer allocated lazily and released when empty, so idle actors cost almost nothing.
 */
export class Mailbox<T> {
  private buffer: (T | undefined)[] | null = null;
  private head = 0;
  private count = 0;
  private writableWaiters: (() => void)[] | null = null;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new Error(`Mailbox requires a positive integer capacity, got ${capacity}`);
    }
  }

  /** Messages waiting. */
  get size(): number {
    return this.count;
  }

  /** True when `offer` would refuse: the backpressure signal. */
  get isFull(): boolean {
    return this.count >= this.capacity;
  }

  /** Appends unless full; returns false (and keeps nothing) when the mailbox is at capacity. */
  offer(item: T): boolean {
    if (this.count >= this.capacity) return false;
    this.append(item);
    return true;
  }

  /** Appends past capacity: for envelopes already accepted elsewhere whose volume the transport bounds. */
  force(item: T): void {
    this.append(item);
  }

  /** Removes and returns the oldest message, or undefined when empty. */
  shift(): T | undefined {
    if (this.count === 0 || this.buffer === null) return undefined;
    const buffer = this.buffer;
    const item = buffer[this.head];
    buffer[this.head] = undefined;
    this.head = (this.head + 1) & (buffer.length - 1);
    this.count--;
    if (this.count === 0) {
      this.head = 0;
      // A burst grew the buffer; give the memory back once it is drained.
      if (buffer.length > 64) this.buffer = null;
    }
    if (this.writableWaiters !== null && this.count < this.capacity) this.wakeWriters();
    return item;
  }

  /** Removes and returns everything queued, oldest first. */
  clear(): T[] {
    const items: T[] = [];
    for (let item = this.shift(); item !== undefined; item = this.shift()) items.push(item);
    return items;
  }

  /** Resolves once the mailbox has room again. */
  whenWritable(): Promise<void> {
    if (this.count < this.capacity) return Promise.resolve();
    return new Promise((resolve) => {
      this.writableWaiters ??= [];
      this.writableWaiters.push(resolve);
    });
  }

  private append(item: T): void {
    let buffer = this.buffer;
    if (buffer === null) {
      buffer = new Array(4);
      this.buffer = buffer;
    } else if (this.count === buffer.length) {
      buffer = this.grow(buffer);
    }
    buffer[(this.head + this.count) & (buffer.length - 1)] = item;
    this.count++;
  }

  private grow(old: (T | undefined)[]): (T | undefined)[] {
    const next = new Array<T | undefined>(old.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = old[(this.head + i) & (old.length - 1)];
    this.head = 0;
    this.buffer = next;
    return next;
  }

  private wakeWriters(): void {
    const waiters = this.writableWaiters ?? [];
    this.writableWaiters = null;
    for (const wake of waiters) wake();
  }
}
