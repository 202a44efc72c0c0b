import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { EXIT_SOFTWARE } from "../../src/config/index.ts";
import { runToEnd } from "../support/process.ts";

const CHILD = resolve(import.meta.dir, "fixtures/uncaught-child.ts");

/**
 * The node's last resort (src/observability/fatal.ts, wired in src/main.ts): an error nobody caught
 * is one fatal line in the structured log, without the error's message, and the process exits 70
 * at once. Before, Bun printed the message and a source excerpt on stderr and exited 1.
 */
describe("an error nobody caught", () => {
  for (const [how, kind, type] of [
    ["throw", "uncaughtException", "TypeError"],
    ["reject", "unhandledRejection", "Error"],
  ] as const) {
    test(`${kind}: one fatal log line naming the kind and the class, never the message; exit ${EXIT_SOFTWARE}`, async () => {
      const run = await runToEnd([process.execPath, CHILD, how], { timeoutMs: 30_000 });
      expect(run.code).toBe(EXIT_SOFTWARE);
      const lines = run.stdout
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.map((l) => [l.level, l.msg, l.kind])).toEqual([
        [60, "uncaught error: the node exits", kind],
      ]);
      expect((lines[0]?.err as { type?: string } | undefined)?.type).toBe(type);
      const everything = run.stdout + run.stderr;
      expect(everything).not.toContain("secret-token");
      expect(everything).not.toContain("still running");
    }, 60_000);
  }
});
