import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Reads a stage trace (`CB_STAGE_TRACE=<dir> npm run loadtest -- …`, src/observability/stage-trace.ts)
 * and prints where the sampled messages of the run's last phase spent their time:
 * `bun run src/loadtest/stage-report.ts <dir> [gapMs]`. The last phase starts after the last pause
 * of more than `gapMs` (default 300) between two sampled messages' due times.
 */

/** The stages of a 1:1 message, in path order (due and sent and dlv in the harness, the rest in the node). */
const PATH = ["due", "sent", "rx", "chain", "queued", "wstart", "commit", "push", "dlv"] as const;

/** Stamps of one message by stage, and one process's events by kind, both in ms. */
interface Trace {
  stamps: Map<string, Map<string, number>>;
  events: Map<string, Map<string, [number, number][]>>;
}

function read(dir: string): Trace {
  const stamps = new Map<string, Map<string, number>>();
  const events = new Map<string, Map<string, [number, number][]>>();
  for (const name of readdirSync(dir).filter((f) => f.endsWith(".trace"))) {
    const pid = name.slice(0, -".trace".length);
    const own = new Map<string, [number, number][]>();
    events.set(pid, own);
    for (const line of readFileSync(join(dir, name), "utf8").split("\n")) {
      const [first, second, third, fourth] = line.split(" ");
      if (first === undefined || second === undefined || third === undefined) continue;
      if (first === "-") {
        const list = own.get(second) ?? [];
        list.push([Number(third), Number(fourth)]);
        own.set(second, list);
        continue;
      }
      const of = stamps.get(first) ?? new Map<string, number>();
      if (!of.has(second)) of.set(second, Number(third));
      stamps.set(first, of);
    }
  }
  return { stamps, events };
}

function quantile(sorted: number[], q: number): number {
  return sorted.length === 0
    ? Number.NaN
    : (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number);
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** A message's stamp at `stage`, NaN when it has none. */
function at(stamps: Map<string, number> | undefined, stage: string): number {
  return stamps?.get(stage) ?? Number.NaN;
}

const ms = (n: number) => n.toFixed(2).padStart(8);

function main(): void {
  const [dir, gapArg] = process.argv.slice(2);
  if (!dir) {
    console.error("usage: bun run src/loadtest/stage-report.ts <trace dir> [gapMs]");
    process.exit(2);
  }
  const gap = Number(gapArg ?? 300);
  const { stamps, events } = read(dir);
  const byDue = [...stamps.values()].filter((s) => s.has("due")).sort((a, b) => at(a, "due") - at(b, "due"));
  let start = 0;
  for (let k = 1; k < byDue.length; k++) if (at(byDue[k], "due") - at(byDue[k - 1], "due") > gap) start = k;
  const phase = byDue.slice(start);
  if (phase.length === 0) {
    console.log("no sampled messages");
    return;
  }
  const from = at(phase[0], "due");
  const to = at(phase.at(-1), "due");
  const complete = phase
    .filter((s) => PATH.every((stage) => s.has(stage)))
    .sort((a, b) => at(a, "dlv") - at(a, "due") - (at(b, "dlv") - at(b, "due")));
  const total = complete.map((s) => at(s, "dlv") - at(s, "due"));
  console.log(
    `last phase: ${phase.length} sampled messages over ${((to - from) / 1000).toFixed(1)} s, ${complete.length} with every stage`,
  );
  console.log(
    `due→delivered ms: p50 ${quantile(total, 0.5).toFixed(1)}, p90 ${quantile(total, 0.9).toFixed(1)}, p99 ${quantile(total, 0.99).toFixed(1)}, max ${total.at(-1)?.toFixed(1)}`,
  );
  const steps = PATH.slice(1).map((stage, i) => [PATH[i] as string, stage] as const);
  console.log(`mean ms per stage  ${steps.map(([a, b]) => `${a}→${b}`.padStart(14)).join("")}     total`);
  const n = complete.length;
  const groups: [string, Map<string, number>[]][] = [
    ["fastest half", complete.slice(0, Math.floor(n / 2))],
    ["p50–p90", complete.slice(Math.floor(n / 2), Math.floor(n * 0.9))],
    ["p90–p99", complete.slice(Math.floor(n * 0.9), Math.floor(n * 0.99))],
    ["slowest 1 %", complete.slice(Math.floor(n * 0.99))],
  ];
  for (const [name, messages] of groups) {
    if (messages.length === 0) continue;
    const cells = steps.map(([a, b]) => mean(messages.map((s) => at(s, b) - at(s, a))));
    const sum = mean(messages.map((s) => at(s, "dlv") - at(s, "due")));
    console.log(`${name.padEnd(18)} ${cells.map((c) => ms(c).padStart(14)).join("")}${ms(sum)}`);
  }
  const p = (q: number) =>
    steps.map(([a, b]) =>
      quantile(
        complete.map((s) => at(s, b) - at(s, a)).sort((x, y) => x - y),
        q,
      ),
    );
  console.log(
    `${"stage p50".padEnd(18)} ${p(0.5)
      .map((c) => ms(c).padStart(14))
      .join("")}`,
  );
  console.log(
    `${"stage p99".padEnd(18)} ${p(0.99)
      .map((c) => ms(c).padStart(14))
      .join("")}`,
  );
  const spread = (a: string, b: string) => {
    const d = complete
      .filter((s) => s.has(a) && s.has(b))
      .map((s) => at(s, b) - at(s, a))
      .sort((x, y) => x - y);
    return `p50 ${quantile(d, 0.5).toFixed(2)}, p99 ${quantile(d, 0.99).toFixed(2)} ms`;
  };
  // The sender's `accepted` leaves once the recipient's actor took the envelopes (after the push).
  console.log(
    `commit→accepted written ${spread("commit", "acc")}; due→accepted read ${spread("due", "hacc")}`,
  );
  for (const [pid, own] of events) {
    const inPhase = (kind: string) => (own.get(kind) ?? []).filter(([at]) => at >= from && at <= to + 50);
    const lag = inPhase("lag");
    const cpu = inPhase("lagcpu");
    if (lag.length > 0) {
      const late = lag.map(([, v]) => v).sort((a, b) => a - b);
      const wall = late.reduce((a, b) => a + b + 5, 0);
      const used = cpu.reduce((a, [, v]) => a + v, 0);
      console.log(
        `process ${pid}: 5 ms timer late > 1 ms ${late.length} times, ${late.reduce((a, b) => a + b, 0).toFixed(0)} ms in all (max ${late.at(-1)?.toFixed(1)}); CPU used over those intervals ${used.toFixed(0)} of ${wall.toFixed(0)} ms`,
      );
    }
    const ran = inPhase("lagrun");
    if (ran.length === lag.length && ran.length > 0) {
      // Where the event-loop thread was over its late intervals (schedstat): on a CPU, waiting
      // for one, or neither (blocked or asleep); and the intervals in which the JS heap shrank.
      const waited = inPhase("lagwait");
      const freed = inPhase("lagfreed");
      for (const floor of [1, 10]) {
        let count = 0;
        let wall = 0;
        let onCpu = 0;
        let queued = 0;
        let gcCount = 0;
        let gcLate = 0;
        lag.forEach(([, late], i) => {
          if (late <= floor) return;
          count++;
          wall += late + 5;
          onCpu += ran[i]?.[1] ?? 0;
          queued += waited[i]?.[1] ?? 0;
          if ((freed[i]?.[1] ?? 0) > 0) {
            gcCount++;
            gcLate += late;
          }
        });
        if (count === 0) continue;
        console.log(
          `process ${pid}: ${count} intervals late > ${floor} ms, ${wall.toFixed(0)} ms long in all: loop thread on a CPU ${onCpu.toFixed(0)}, waiting for one ${queued.toFixed(0)}, neither ${(wall - onCpu - queued).toFixed(0)} ms; the heap shrank in ${gcCount} of them (${gcLate.toFixed(0)} ms late)`,
        );
      }
    }
    const parts = ["wqueue", "wstatements", "wcommit", "wreply", "wran", "wwaited"];
    const traced = parts.map((kind) => inPhase(kind).map(([, v]) => v));
    const total = inPhase("writems").map(([, v]) => v);
    if ((traced[0]?.length ?? 0) > 0 && traced.every((t) => t.length === total.length)) {
      // The embedded log's writes, parted (sqlite-log-worker.ts): all of them, and the slowest 1 %.
      const order = total.map((v, i) => [v, i] as const).sort((a, b) => a[0] - b[0]);
      const slow = order.slice(Math.floor(order.length * 0.99)).map(([, i]) => i);
      const row = (pick: number[]) =>
        parts.map((kind, k) => `${kind} ${mean(pick.map((i) => traced[k]?.[i] ?? 0)).toFixed(2)}`).join(", ");
      console.log(`process ${pid}: writes, mean ms: ${row(total.map((_, i) => i))}`);
      console.log(
        `process ${pid}: slowest 1 % of writes (${slow.length}, ≥ ${order[order.length - slow.length]?.[0].toFixed(1)} ms), mean ms: ${row(slow)}`,
      );
    }
    const blocking = inPhase("pglitems")
      .map(([, v]) => v)
      .sort((a, b) => a - b);
    if (blocking.length > 0)
      console.log(
        `process ${pid}: ${blocking.length} PGlite calls on the event loop, ${blocking.reduce((a, b) => a + b, 0).toFixed(1)} ms in all, p99 ${quantile(blocking, 0.99).toFixed(2)}, max ${blocking.at(-1)?.toFixed(2)} ms`,
      );
    for (const kind of own.keys()) {
      if (kind.startsWith("lag") || kind.endsWith("ms") || parts.includes(kind)) continue;
      const sizes = inPhase(kind).map(([, v]) => v);
      const took = inPhase(`${kind}ms`)
        .map(([, v]) => v)
        .sort((a, b) => a - b);
      if (sizes.length === 0) continue;
      console.log(
        `process ${pid}: ${sizes.length} ${kind} writes, ${mean(sizes).toFixed(1)} items each; took p50 ${quantile(took, 0.5).toFixed(2)}, p99 ${quantile(took, 0.99).toFixed(2)} ms`,
      );
    }
  }
}

main();
