import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { type LoadtestOptions, OptionsError, parseOptions, SCENARIOS } from "../../src/loadtest/options.ts";
import { runToEnd } from "../support/process.ts";

/** What every scenario gets when a flag is not given and the scenario sets nothing of its own. */
const COMMON = {
  urls: [],
  adminUrl: undefined,
  adminToken: undefined,
  size: 64,
  e2ee: false,
  json: false,
  concurrency: 8,
  drainTimeoutS: 15,
  ackDelayMs: 5,
  profileDir: undefined,
  progress: true,
  abusers: 4,
  service: "all" as const,
  downS: 5,
};

describe("load-test option parsing: defaults", () => {
  test("smoke", () => {
    expect(parseOptions(["smoke"])).toEqual({
      ...COMMON,
      scenario: "smoke",
      stack: "embedded",
      nodes: 1,
      users: 4,
      messages: 300,
      durationS: 10,
      rate: undefined,
      window: 8,
      groupSizes: [100],
      groupMessages: 20,
      connections: 1000,
      baseline: false,
      settleS: 0,
    } satisfies LoadtestOptions);
  });

  test("one-to-one: 200 users at half the flat-out peak, with the relay baseline", () => {
    expect(parseOptions(["one-to-one"])).toMatchObject({
      users: 200,
      messages: 2_000_000,
      durationS: 10,
      window: 16,
      rate: "half",
      baseline: true,
      settleS: 10,
      stack: "embedded",
      nodes: 1,
    });
  });

  test("offline, fanout, connections and cluster", () => {
    expect(parseOptions(["offline"])).toMatchObject({
      users: 100,
      messages: 20_000,
      durationS: 60,
      window: 32,
      baseline: false,
      settleS: 0,
    });
    expect(parseOptions(["fanout"])).toMatchObject({
      users: 0,
      groupSizes: [100, 1000],
      groupMessages: 20,
      baseline: true,
    });
    expect(parseOptions(["connections"])).toMatchObject({
      connections: 2000,
      users: 0,
      baseline: true,
      settleS: 3,
    });
    expect(parseOptions(["cluster"])).toMatchObject({
      users: 200,
      rate: "half",
      nodes: 3,
      stack: "services",
      window: 16,
    });
  });

  test("every scenario parses with no flags", () => {
    for (const scenario of SCENARIOS) expect(parseOptions([scenario]).scenario).toBe(scenario);
  });
});

describe("load-test option parsing: each flag", () => {
  test("numeric flags", () => {
    const options = parseOptions([
      "one-to-one",
      ...["--nodes", "2", "--users", "10", "--messages", "500", "--duration", "30"],
      ...["--window", "4", "--size", "256", "--group-sizes", "10,20,30", "--group-messages", "7"],
      ...["--connections", "50", "--concurrency", "3", "--drain-timeout", "9", "--settle", "2"],
      ...["--ack-delay", "0"],
    ]);
    expect(options).toMatchObject({
      nodes: 2,
      users: 10,
      messages: 500,
      durationS: 30,
      window: 4,
      size: 256,
      groupSizes: [10, 20, 30],
      groupMessages: 7,
      connections: 50,
      concurrency: 3,
      drainTimeoutS: 9,
      settleS: 2,
      ackDelayMs: 0,
    });
  });

  test("a fractional number is rounded down", () => {
    expect(parseOptions(["smoke", "--messages", "12.9"]).messages).toBe(12);
  });

  test("--rate: a number, half, or max (flat out)", () => {
    expect(parseOptions(["smoke", "--rate", "250"]).rate).toBe(250);
    expect(parseOptions(["smoke", "--rate", "half"]).rate).toBe("half");
    expect(parseOptions(["one-to-one", "--rate", "max"]).rate).toBeUndefined();
  });

  test("--url takes one or more nodes; --spawn ignores them", () => {
    expect(parseOptions(["smoke", "--url", "http://127.0.0.1:8080"]).urls).toEqual(["http://127.0.0.1:8080"]);
    expect(parseOptions(["smoke", "--url", "http://a:1,https://b:2"]).urls).toEqual([
      "http://a:1",
      "https://b:2",
    ]);
    expect(parseOptions(["smoke", "--url", "http://a:1", "--spawn"]).urls).toEqual([]);
  });

  test("--stack, admin access, profile directory", () => {
    expect(parseOptions(["smoke", "--stack", "services"]).stack).toBe("services");
    expect(parseOptions(["cluster", "--stack", "embedded"]).stack).toBe("embedded");
    expect(
      parseOptions([
        "smoke",
        "--admin-url",
        "http://127.0.0.1:9090",
        "--admin-token",
        "t0k",
        "--profile",
        "/tmp/p",
      ]),
    ).toMatchObject({ adminUrl: "http://127.0.0.1:9090", adminToken: "t0k", profileDir: "/tmp/p" });
  });

  test("boolean flags and their --no- forms", () => {
    expect(parseOptions(["smoke", "--e2ee", "--json", "--baseline", "--no-progress"])).toMatchObject({
      e2ee: true,
      json: true,
      baseline: true,
      progress: false,
    });
    expect(parseOptions(["one-to-one", "--no-baseline"]).baseline).toBe(false);
  });

  test("fanout and connections need no users; the other scenarios at least two", () => {
    expect(parseOptions(["fanout", "--users", "0"]).users).toBe(0);
    expect(parseOptions(["connections", "--users", "1"]).users).toBe(1);
    expect(parseOptions(["smoke", "--users", "2"]).users).toBe(2);
  });
});

describe("load-test option parsing: bad values are refused with a message naming the flag", () => {
  const refused = (argv: string[], message: string | RegExp) => {
    expect(() => parseOptions(argv)).toThrow(OptionsError);
    expect(() => parseOptions(argv)).toThrow(message);
  };

  test("no scenario, or an unknown one", () => {
    refused([], `expected a scenario (${SCENARIOS.join(", ")}), got none`);
    refused(["storm"], "got storm");
  });

  test("numbers that are not numbers, or below the flag's minimum", () => {
    refused(["smoke", "--messages", "lots"], "--messages expects a number ≥ 1, got lots");
    refused(["smoke", "--messages", "0"], "--messages expects a number ≥ 1, got 0");
    refused(["smoke", "--duration=-5"], "--duration expects a number ≥ 1, got -5");
    refused(["smoke", "--size", "Infinity"], "--size expects a number ≥ 1, got Infinity");
    refused(["smoke", "--nodes", "0"], "--nodes expects a number ≥ 1, got 0");
    refused(["smoke", "--settle=-1"], "--settle expects a number ≥ 0, got -1");
    refused(["smoke", "--ack-delay", "soon"], "--ack-delay expects a number ≥ 0, got soon");
    refused(["smoke", "--window", "NaN"], "--window expects a number ≥ 1, got NaN");
  });

  test("--rate accepts only a positive number, half or max", () => {
    refused(["smoke", "--rate", "0"], "--rate expects a number ≥ 1, got 0");
    refused(["smoke", "--rate", "fast"], "--rate expects a number ≥ 1, got fast");
  });

  test("--group-sizes needs groups of at least two", () => {
    refused(["fanout", "--group-sizes", "100,1"], "--group-sizes expects a number ≥ 2, got 1");
    refused(["fanout", "--group-sizes", "100,big"], "--group-sizes expects a number ≥ 2, got big");
  });

  test("--stack and --url", () => {
    refused(["smoke", "--stack", "docker"], "--stack expects embedded or services, got docker");
    refused(["smoke", "--url", "127.0.0.1:8080"], "--url expects http(s)://host:port, got 127.0.0.1:8080");
    refused(["smoke", "--url", "http://a:1,ws://b:2"], "got ws://b:2");
  });

  test("fewer than two users where messages go from a sender to a recipient", () => {
    refused(["smoke", "--users", "1"], "--users must be at least 2 (a sender and a recipient)");
    refused(["one-to-one", "--users", "0"], "--users must be at least 2");
  });

  test("an unknown flag, a flag without its value, or a value that looks like a flag is refused, naming it", () => {
    expect(() => parseOptions(["smoke", "--userz", "4"])).toThrow("--userz");
    expect(() => parseOptions(["smoke", "--users"])).toThrow("--users");
    expect(() => parseOptions(["smoke", "--duration", "-5"])).toThrow("--duration");
  });
});

describe("load-test option parsing: chaos", () => {
  test("defaults: three nodes on the services stack, every service, 5 s down, 100 msgs/s", () => {
    expect(parseOptions(["chaos"])).toMatchObject({
      scenario: "chaos",
      stack: "services",
      nodes: 3,
      service: "all",
      downS: 5,
      rate: 100,
      users: 30,
    });
  });

  test("--service and --down", () => {
    expect(parseOptions(["chaos", "--service", "redis", "--down", "8"])).toMatchObject({
      service: "redis",
      downS: 8,
    });
  });

  test("an unknown service, an embedded stack or no fixed rate are refused", () => {
    expect(() => parseOptions(["chaos", "--service", "mongodb"])).toThrow(OptionsError);
    expect(() => parseOptions(["chaos", "--stack", "embedded"])).toThrow(OptionsError);
    expect(() => parseOptions(["chaos", "--rate", "max"])).toThrow(OptionsError);
    expect(() => parseOptions(["chaos", "--url", "http://127.0.0.1:1"])).toThrow(OptionsError);
  });
});

describe("npm run loadtest -- --help", () => {
  const main = resolve(import.meta.dir, "../../src/loadtest/main.ts");
  const run = async (args: string[]) => {
    const { stdout: out, stderr: err, code } = await runToEnd(["bun", "run", main, ...args]);
    return { out, err, code };
  };

  test("--help and -h print the usage on stdout and exit 0, with or without a scenario; no run starts", async () => {
    for (const args of [["--help"], ["-h"], ["smoke", "--help"]]) {
      const { out, err, code } = await run(args);
      expect(code).toBe(0);
      expect(out).toContain("usage: npm run loadtest -- <scenario> [options]");
      expect(out).toContain(`scenarios: ${SCENARIOS.join(", ")}`);
      expect(out).not.toContain("scenario smoke:");
      expect(err).toBe("");
    }
  });

  test("no scenario is still a usage error (exit 2, the reason and the usage on stderr)", async () => {
    const { out, err, code } = await run([]);
    expect(code).toBe(2);
    expect(out).toBe("");
    expect(err).toContain("expected a scenario");
    expect(err).toContain("usage: npm run loadtest");
  });
});
