/**
 * `npm run bench:* -- --help` prints the benchmark's usage and exits 0 without measuring anything:
 * bench:actors used to ignore the flag and run (cross-node figures on the shared Redis and
 * RabbitMQ), the others refused it as an unknown option with a stack trace.
 */
import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

describe("benchmark scripts answer --help", () => {
  for (const [script, file] of [
    ["bench:actors", "actor-bench.ts"],
    ["bench:startup", "startup-bench.ts"],
    ["bench:log", "log-bench.ts"],
    ["bench:costs", "unit-costs.ts"],
  ] as const) {
    test(`${script} -- --help (and -h): the usage only, exit 0`, async () => {
      for (const flag of ["--help", "-h"]) {
        const {
          stdout: out,
          stderr: err,
          code,
        } = await runToEnd(["bun", "run", resolve(ROOT, "src/loadtest", file), flag]);
        expect(code).toBe(0);
        expect(out).toStartWith(`usage: npm run ${script}`);
        expect(err).toBe("");
        // Nothing measured: no figure (a number with a unit) in what was printed.
        expect(out).not.toMatch(/\d[\d,.]*\s*(msg\/s|rows\/s|ms|bytes|MB)\b/);
      }
    });
  }
});
