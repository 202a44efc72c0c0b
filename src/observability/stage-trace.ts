import { appendFileSync, readFileSync } from "node:fs";

/**
 * Where a message's time goes, for the load harness only (docs/BENCHMARKS.md "Half-peak latency,
 * stop 27"): off unless `CB_STAGE_TRACE` names a directory, and then every process that imports
 * this (the harness and the nodes it spawns, which inherit the variable) writes
 * `<dir>/<pid>.trace`, once a second and at exit:
 * - `<id> <stage> <ms>`: message `id` reached `stage`, for the ids whose first hex digit is 0 or 1
 *   (an eighth of them, the same ones in every process);
 * - `- <what> <ms> <value>`: an event (`lag`: a 5 ms timer fired `value` ms late, `lagcpu`: the
 *   process's CPU ms, all threads, over that late interval; `lagrun`/`lagwait`: ms the event-loop
 *   thread itself ran on a CPU / waited in a run queue for one over it (Linux schedstat: the rest of
 *   the interval it was blocked or asleep); `lagfreed`: bytes the JS heap shrank by over it, > 0
 *   when a garbage collection ran in it; the logs' `write`/`ack` batch sizes and
 *   `writems`/`ackms` durations).
 * `ms` is `performance.timeOrigin + performance.now()`: one clock for every process on the machine.
 * Message ids are clients' random UUIDs; nothing else of a message is written.
 * `bun run src/loadtest/stage-report.ts <dir>` reads the files back.
 */
const dir = process.env.CB_STAGE_TRACE || undefined;

/** True when `CB_STAGE_TRACE` is set: callers skip loops that exist only to stamp. */
export const stageTraceOn = dir !== undefined;

const lines: string[] = [];

if (dir !== undefined) {
  const file = `${dir}/${process.pid}.trace`;
  const flush = () => {
    if (lines.length === 0) return;
    appendFileSync(file, `${lines.join("\n")}\n`);
    lines.length = 0;
  };
  let expected = performance.now() + 5;
  let cpu = process.cpuUsage();
  let sched = loopThreadSchedule();
  let heap = process.memoryUsage().heapUsed;
  const sampler = setInterval(() => {
    const now = performance.now();
    const late = now - expected;
    const used = process.cpuUsage(cpu);
    cpu = process.cpuUsage();
    const schedNow = loopThreadSchedule();
    const heapNow = process.memoryUsage().heapUsed;
    const ran = schedNow[0] - sched[0];
    const waited = schedNow[1] - sched[1];
    const freed = heap - heapNow;
    sched = schedNow;
    heap = heapNow;
    expected = now + 5;
    if (late <= 1) return;
    const at = (performance.timeOrigin + now).toFixed(3);
    lines.push(
      `- lag ${at} ${late.toFixed(3)}`,
      `- lagcpu ${at} ${((used.user + used.system) / 1000).toFixed(3)}`,
      `- lagrun ${at} ${ran.toFixed(3)}`,
      `- lagwait ${at} ${waited.toFixed(3)}`,
      `- lagfreed ${at} ${Math.max(0, freed)}`,
    );
  }, 5);
  sampler.unref?.();
  const writer = setInterval(flush, 1000);
  writer.unref?.();
  process.on("exit", flush);
}

/**
 * The event-loop thread's scheduler counters from `/proc/thread-self/schedstat` (Linux): ms it ran
 * on a CPU and ms it waited in a run queue for one, since it started; zeros where unreadable.
 */
function loopThreadSchedule(): [number, number] {
  try {
    const [run, wait] = readFileSync("/proc/thread-self/schedstat", "utf8").split(" ");
    return [Number(run) / 1e6, Number(wait) / 1e6];
  } catch {
    return [0, 0];
  }
}

/** Stamps `stage` for message `id` (sampled ids only), now or at `at` (this process's `performance.now()`). */
export function stamp(id: string, stage: string, at?: number): void {
  if (dir === undefined) return;
  const first = id.charCodeAt(0);
  if (first !== 48 && first !== 49) return;
  lines.push(`${id} ${stage} ${(performance.timeOrigin + (at ?? performance.now())).toFixed(3)}`);
}

/** Records an event `what` with a number (a batch size, a duration in ms). */
export function traceEvent(what: string, value: number): void {
  if (dir === undefined) return;
  lines.push(`- ${what} ${(performance.timeOrigin + performance.now()).toFixed(3)} ${value}`);
}

/**
 * Wraps the synchronous method `name` of `target` so that each call is traced as `<what>ms <ms>`:
 * the time it held the event loop (e.g. PGlite's WebAssembly answering one query). Trace on only.
 */
export function traceBlocking(target: object, name: string, what: string): void {
  if (dir === undefined) return;
  const holder = target as Record<string, unknown>;
  const original = holder[name];
  if (typeof original !== "function") return;
  holder[name] = function (this: unknown, ...args: unknown[]) {
    const started = performance.now();
    try {
      return original.apply(this, args);
    } finally {
      lines.push(
        `- ${what}ms ${(performance.timeOrigin + performance.now()).toFixed(3)} ${(performance.now() - started).toFixed(3)}`,
      );
    }
  };
}
