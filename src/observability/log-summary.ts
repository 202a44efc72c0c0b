import type { Logger } from "./logger.ts";

/**
 * One log line for a burst of like events: the first is logged at once with its fields, the others
 * within `intervalMs` are only counted, and one line with that count (`suppressed`) follows when the
 * interval ends. For events a client or an outage can repeat thousands of times a second (a send not
 * answered in time, a store failing every send): the metrics count each one; the log says it happens.
 */
export class LogSummary {
  private suppressed = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly logger: Pick<Logger, "warn" | "error">,
    private readonly level: "warn" | "error",
    private readonly message: string,
    /** Milliseconds a burst is summed over. */
    private readonly intervalMs = 10_000,
  ) {}

  /** Logs `fields` with the message, or counts the event when a line went out less than `intervalMs` ago. */
  note(fields: Record<string, unknown>): void {
    if (this.timer) {
      this.suppressed++;
      return;
    }
    this.logger[this.level](fields, this.message);
    this.timer = setTimeout(() => this.summarise(), this.intervalMs);
    this.timer.unref?.();
  }

  private summarise(): void {
    this.timer = undefined;
    if (this.suppressed === 0) return;
    this.logger[this.level](
      { suppressed: this.suppressed, intervalMs: this.intervalMs },
      `${this.message}: ${this.suppressed} more in ${this.intervalMs / 1000} s`,
    );
    this.suppressed = 0;
  }
}
