/** The live progress line on stderr: rewritten in place on a terminal, one line every few seconds otherwise. */
export class Progress {
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly tty = Boolean(process.stderr.isTTY);
  private started = 0;

  constructor(private readonly enabled: boolean) {}

  /** Shows `status()` every second (every 3 s when stderr is not a terminal) until `stop`. */
  start(label: string, status: () => string): void {
    this.stop();
    if (!this.enabled) return;
    this.started = performance.now();
    const show = () => {
      const elapsed = ((performance.now() - this.started) / 1000).toFixed(1);
      const line = `[${label}] ${elapsed}s ${status()}`;
      if (this.tty) process.stderr.write(`\r\x1b[2K${line}`);
      else process.stderr.write(`${line}\n`);
    };
    this.timer = setInterval(show, this.tty ? 1000 : 3000);
    // A first line at once, so even a phase shorter than the interval shows up.
    queueMicrotask(show);
  }

  stop(): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.tty) process.stderr.write("\n");
  }

  /** A one-off note on stderr (set-up steps, phase ends). */
  note(text: string): void {
    if (!this.enabled) return;
    if (this.tty && this.timer) process.stderr.write("\r\x1b[2K");
    process.stderr.write(`${text}\n`);
  }
}
