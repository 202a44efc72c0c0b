import { describe, expect, test } from "bun:test";
import { type ServiceProcess, servicesDelta } from "../../src/loadtest/process-stats.ts";

/** A reading keyed as `servicesCpuSeconds` keys it: pid and start time. */
const reading = (entries: [string, number, string][]) =>
  new Map<string, ServiceProcess>(entries.map(([key, seconds, parent]) => [key, { seconds, parent }]));

describe("the services' CPU over a phase", () => {
  test("counts a backend the postmaster forked during the phase with all of its time", () => {
    // postmaster 100 and its backend 101 at the start; 102 forked by 100 during the phase.
    const before = reading([
      ["100@5", 1.0, "1"],
      ["101@6", 2.0, "100"],
    ]);
    const after = reading([
      ["100@5", 1.5, "1"],
      ["101@6", 2.25, "100"],
      ["102@900", 0.75, "100"],
    ]);
    expect(servicesDelta(before, after)).toBeCloseTo(0.5 + 0.25 + 0.75);
  });

  test("leaves out a service started from elsewhere (another session's own broker) and a reused pid's old process", () => {
    const before = reading([["200@5", 3.0, "1"]]);
    const after = reading([
      ["200@5", 3.5, "1"],
      // Another session's RabbitMQ node, started by its test runner during the phase.
      ["300@950", 4.0, "299"],
    ]);
    expect(servicesDelta(before, after)).toBeCloseTo(0.5);
  });
});
