import { describe, expect, test } from "bun:test";
import { Writable } from "node:stream";
import { LogSummary } from "../../src/observability/log-summary.ts";
import { createLogger } from "../../src/observability/logger.ts";

/** A node logger whose JSON lines are kept in `lines`. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n")) if (line.trim()) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, logger: createLogger({ level: "info", nodeId: "test", destination }) };
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await Bun.sleep(5);
}

describe("LogSummary", () => {
  test("a burst of 1,000 like events makes one line at once and one line with the count", async () => {
    const { lines, logger } = capturingLogger();
    const late = new LogSummary(logger, "warn", "send not answered in time", 100);
    for (let i = 0; i < 1000; i++) late.note({ user: `u${i}` });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, msg: "send not answered in time", user: "u0" });
    await until(() => lines.length === 2);
    expect(lines[1]).toMatchObject({ level: 40, suppressed: 999, intervalMs: 100 });
    expect(lines[1]?.user).toBeUndefined();
    // The next event after the interval is logged at once again, with its own fields.
    late.note({ user: "later" });
    expect(lines).toHaveLength(3);
    expect(lines[2]).toMatchObject({ msg: "send not answered in time", user: "later" });
  });

  test("a lone event makes one line and no summary", async () => {
    const { lines, logger } = capturingLogger();
    const failed = new LogSummary(logger, "error", "send failed", 20);
    failed.note({ user: "u" });
    await Bun.sleep(60);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 50, msg: "send failed" });
  });
});
