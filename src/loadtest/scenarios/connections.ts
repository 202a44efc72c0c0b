import type { PhaseResult, ScenarioContext } from "../phase.ts";
import { summarise } from "../phase.ts";
import { inPool } from "../pool.ts";
import { selfCpu } from "../process-stats.ts";
import { LoadSocket } from "../socket.ts";
import { Tracker } from "../tracker.ts";

/** File descriptors one process may hold here (hard limit); the harness keeps some for itself. */
const FD_LIMIT = 20_000;
const FD_RESERVE = 500;
const SETTLE_MS = 3000;

/**
 * Connection storm: ramp to N idle sockets (one user — and so one user actor — per socket unless
 * `--users` is smaller), then memory per connection = (RSS with N − RSS with 0) / N, and the
 * marginal figure = (RSS with N − RSS with N/2) / (N/2).
 */
export async function connections(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const { options, system, progress } = ctx;
  const n = options.connections;
  if (n > FD_LIMIT - FD_RESERVE) {
    throw new Error(
      `--connections ${n} exceeds what one client process can open here (open-file limit ${FD_LIMIT}); ` +
        "run several harness processes or use at most 19,500",
    );
  }
  const accounts = options.users > 0 ? Math.min(options.users, n) : n;
  let created = 0;
  const t0 = performance.now();
  progress.start(`${system.name} accounts`, () => `${created}/${n} devices created`);
  const devices =
    accounts >= n
      ? await system.target.createUsers(n, (d) => {
          created = d;
        })
      : await system.target.createDevices(n, accounts, (d) => {
          created = d;
        });
  progress.stop();
  progress.note(
    `${system.name}: ${n} devices in ${accounts} accounts ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  await Bun.sleep(SETTLE_MS);
  await system.sampler.start();
  const rssBefore = await system.sampler.rssNow();
  const cpu = selfCpu();
  let open = 0;
  progress.start(`${system.name} ramp`, () => `${open}/${n} connections`);
  const sockets: LoadSocket[] = [];
  // Two halves: the second half's RSS growth is the marginal cost of a connection, without the
  // allocator's high-water mark from the first half's set-up churn (upgrades, queries, channels).
  const half = Math.floor(n / 2);
  let rssHalf = 0;
  let rampMs = 0;
  try {
    for (const [from, to] of [
      [0, half],
      [half, n],
    ] as const) {
      const started = performance.now();
      sockets.push(
        ...(await inPool(
          to - from,
          128,
          (i) => LoadSocket.open(system.target, devices[from + i] as (typeof devices)[number]),
          (d) => {
            open = from + d;
          },
        )),
      );
      rampMs += performance.now() - started;
      // `--settle`: how long the sockets stay open before RSS is read (long enough to profile the server).
      await Bun.sleep(options.settleS * 1000);
      if (from === 0) rssHalf = await system.sampler.rssNow();
    }
  } finally {
    progress.stop();
  }
  const rssAfter = await system.sampler.rssNow();
  const stillOpen = sockets.filter((s) => !s.closed).length;
  const closedWith: Record<string, number> = {};
  for (const s of sockets) {
    if (s.closedWith) closedWith[s.closedWith] = (closedWith[s.closedWith] ?? 0) + 1;
  }
  const server = await system.sampler.finish();
  const result = summarise(ctx, `${n} idle`, new Tracker(), rampMs, server, cpu());
  result.extra = {
    connections: stillOpen,
    closedDuringRun: n - stillOpen,
    rampPerSec: Math.round(n / (rampMs / 1000)),
    rssBeforeMb: Math.round((rssBefore / 1048576) * 10) / 10,
    rssAfterMb: Math.round((rssAfter / 1048576) * 10) / 10,
    ...(rssBefore > 0
      ? {
          bytesPerConnection: Math.round((rssAfter - rssBefore) / n),
          marginalBytesPerConnection: Math.round((rssAfter - rssHalf) / (n - half)),
        }
      : {}),
  };
  progress.note(
    `${system.name}: ${stillOpen}/${n} open, ${result.extra.bytesPerConnection ?? "?"} bytes of server RSS each ` +
      `(${result.extra.marginalBytesPerConnection ?? "?"} for each of the second half)`,
  );
  if (stillOpen < n) progress.note(`${system.name}: closed during the run: ${JSON.stringify(closedWith)}`);
  await inPool(sockets.length, 256, (i) => (sockets[i] as LoadSocket).close());
  return [result];
}
