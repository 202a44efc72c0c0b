/**
 * `bun run src/loadtest/hostile-bench.ts <base-url> [repeats]`: how long a node takes to refuse
 * each hostile body of issue 13, and how long `/healthz` waits meanwhile. Each body is sent
 * `repeats` times (default 5), one at a time; beside each, `/healthz` is asked every 5 ms and its
 * slowest answer kept. Prints one JSON line per body: status, median and max refusal time (ms),
 * max `/healthz` time (ms). Figures go to docs/BENCHMARKS.md; nothing here asserts a duration.
 */

const nestedObjects = (depth: number) => `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`;
const nestedArrays = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;

const BODIES: [string, string, string, string][] = [
  ["12,000 nested objects (72 KB)", "/v1/accounts", "application/json", nestedObjects(12_000)],
  ["3,000 nested objects (18 KB)", "/v1/accounts", "application/json", nestedObjects(3_000)],
  ["100,000-deep array (200 KB)", "/v1/accounts", "application/json", nestedArrays(100_000)],
  [
    "deviceName with NUL",
    "/v1/sessions",
    "application/json",
    '{"username":"nobody_here","password":"password123","registrationId":7,"deviceName":"x\\u0000"}',
  ],
  [
    "form-encoded sign-up",
    "/v1/accounts",
    "application/x-www-form-urlencoded",
    "username=formuser&password=password123",
  ],
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const round = (x: number) => Math.round(x * 10) / 10;

async function main() {
  const [url, repeatsArg] = process.argv.slice(2);
  if (!url || !/^https?:\/\//.test(url)) {
    console.error("usage: bun run src/loadtest/hostile-bench.ts <base-url> [repeats]");
    process.exit(2);
  }
  const repeats = Number(repeatsArg ?? 5);
  // Warm the node's routes up first.
  for (let i = 0; i < 3; i++) await (await fetch(`${url}/healthz`)).arrayBuffer();
  for (const [what, path, type, body] of BODIES) {
    const times: number[] = [];
    let status = 0;
    let healthMax = 0;
    for (let i = 0; i < repeats; i++) {
      let running = true;
      const poll = (async () => {
        while (running) {
          const t = performance.now();
          await (await fetch(`${url}/healthz`)).arrayBuffer();
          healthMax = Math.max(healthMax, performance.now() - t);
          await Bun.sleep(5);
        }
      })();
      const t = performance.now();
      const res = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": type }, body });
      await res.arrayBuffer();
      times.push(performance.now() - t);
      status = res.status;
      running = false;
      await poll;
    }
    console.log(
      JSON.stringify({
        body: what,
        status,
        medianMs: round(median(times)),
        maxMs: round(Math.max(...times)),
        healthzMaxMs: round(healthMax),
      }),
    );
  }
}

await main();

export {};
