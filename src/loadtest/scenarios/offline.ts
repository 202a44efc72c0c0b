import { type BrokerSnapshot, brokerSnapshot } from "../broker.ts";
import { directFrame, drive, plainBody } from "../load.ts";
import {
  connectAll,
  makeUsers,
  type PhaseResult,
  type ScenarioContext,
  summarise,
  trackerStatus,
} from "../phase.ts";
import { selfCpu } from "../process-stats.ts";
import { LoadSocket } from "../socket.ts";
import { Tracker } from "../tracker.ts";

/**
 * Offline backlog: users/2 senders queue `--messages` for recipients that are not connected; then
 * the recipients connect and the harness measures how fast the backlog drains (first connect to
 * last delivery). Send → delivered latency here includes the time spent offline, by design.
 *
 * On the services stack with spawned nodes it also reads the broker (`broker.ts`) before sending,
 * at the peak (every accepted message flushed to its queue) and after the drain (once the queue
 * count stops falling): offline queues and ready messages of the run, and the broker's memory.
 * `--window w --messages w·users/2` gives every recipient exactly w messages; `--rate r` paces the
 * sends at r/s (set `--duration` long enough for all of them).
 *
 * The senders close once their sends are answered, before the recipients connect, and the
 * recipients open 64 at a time: at N = 10,000 recipients the harness and the node then hold
 * N sockets at a time, not 2N, under the open-file limit of 20,000 per process.
 */
export async function offline(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const { options, system, progress } = ctx;
  const pairs = Math.floor(options.users / 2);
  const users = await makeUsers(ctx, pairs * 2);
  const recipients = users.slice(pairs);
  const senders = await connectAll(ctx, users.slice(0, pairs), "senders", (d) =>
    LoadSocket.open(system.target, d),
  );
  const body = plainBody(options.size);
  const tracker = new Tracker();
  for (const s of senders) s.tracker = tracker;
  const broker = system.queuePrefix ? brokerReadings(system.queuePrefix) : undefined;
  if (broker) broker.before = await broker.read();
  const cpu = selfCpu();
  await system.sampler.start();
  progress.start(`${system.name} queue`, trackerStatus(tracker));
  const routes = senders.map((sender, i) => {
    const r = recipients[i % recipients.length] ?? recipients[0];
    return {
      sender,
      expected: 1,
      frame: (id: string) => directFrame(id, r?.userId ?? "", r?.deviceId ?? 1, body),
    };
  });
  const queueStart = performance.now();
  await drive({
    routes,
    tracker,
    window: options.window,
    maxMessages: options.messages,
    durationMs: options.durationS * 1000,
    // `--rate` paces the queueing phase; without it every sender fires its window at once.
    rate: typeof options.rate === "number" ? options.rate : undefined,
  });
  const answerDeadline = performance.now() + options.drainTimeoutS * 1000;
  while (tracker.unanswered > 0 && performance.now() < answerDeadline) await Bun.sleep(20);
  const queueMs = performance.now() - queueStart;
  progress.stop();
  // The senders' part is over: their sockets would only count against the open-file limits.
  await Promise.all(senders.map((s) => s.close()));
  const queuedRate = Math.round(tracker.accepted / (queueMs / 1000));
  progress.note(`${system.name}: ${tracker.accepted} messages queued for offline devices at ${queuedRate}/s`);
  if (broker) {
    // Accepted means the recipient's actor took it; the flush to the queue follows.
    broker.peak = await broker.until((b) => b.offlineMessages >= tracker.accepted, options.drainTimeoutS);
    progress.note(`${system.name}: broker at the peak ${describe(broker.peak)}`);
  }

  const drainStart = performance.now();
  let inbox: LoadSocket[] = [];
  try {
    inbox = await connectAll(ctx, recipients, "recipients", (d) =>
      LoadSocket.open(system.target, d, tracker),
    );
    progress.start(`${system.name} drain`, trackerStatus(tracker));
    const deadline = performance.now() + Math.max(options.drainTimeoutS, 60) * 1000;
    while (!tracker.settled && performance.now() < deadline) await Bun.sleep(10);
  } finally {
    progress.stop();
  }
  const drainMs =
    (Number.isNaN(tracker.lastDeliveryAt) ? performance.now() : tracker.lastDeliveryAt) - drainStart;
  const server = await system.sampler.finish();
  if (broker) {
    broker.after = await broker.settled(options.drainTimeoutS);
    progress.note(`${system.name}: broker after the drain ${describe(broker.after)}`);
  }
  const result = summarise(ctx, "drain", tracker, queueMs, server, cpu());
  result.msgsPerSec = drainMs > 0 ? Math.round(tracker.delivered / (drainMs / 1000)) : 0;
  result.extra = {
    queuedPerSec: queuedRate,
    drainMs: Math.round(drainMs),
    backlog: tracker.accepted,
    ...(broker ? broker.figures() : {}),
  };
  progress.note(
    `${system.name}: drained ${tracker.delivered} in ${Math.round(drainMs)} ms → ${result.msgsPerSec}/s`,
  );
  await Promise.all(inbox.map((s) => s.close()));
  return [result];
}

const MB = 1024 * 1024;

function describe(b: BrokerSnapshot): string {
  return `${b.offlineQueues} offline queues, ${b.offlineMessages} messages, queue processes ${(b.queueProcsBytes / MB).toFixed(1)} MB, total ${(b.totalBytes / MB).toFixed(1)} MB`;
}

/** Broker readings of one run: before, at the peak, after; `until`/`settled` poll (a reading takes a second or two). */
function brokerReadings(prefix: string) {
  const readings: {
    before?: BrokerSnapshot;
    peak?: BrokerSnapshot;
    after?: BrokerSnapshot;
    read: () => Promise<BrokerSnapshot>;
    until: (done: (b: BrokerSnapshot) => boolean, timeoutS: number) => Promise<BrokerSnapshot>;
    settled: (timeoutS: number) => Promise<BrokerSnapshot>;
    figures: () => Record<string, number>;
  } = {
    read: () => brokerSnapshot(prefix),
    async until(done, timeoutS) {
      const deadline = performance.now() + timeoutS * 1000;
      let b = await readings.read();
      while (!done(b) && performance.now() < deadline) {
        await Bun.sleep(500);
        b = await readings.read();
      }
      return b;
    },
    /**
     * Reads until the queue count is 0 or has not fallen for 30 s (a reading of 10,000 queues takes
     * seconds, so a count of readings would stop while removals are still under way).
     */
    async settled(timeoutS) {
      const deadline = performance.now() + timeoutS * 1000;
      let b = await readings.read();
      let fellAt = performance.now();
      while (b.offlineQueues > 0 && performance.now() - fellAt < 30_000 && performance.now() < deadline) {
        await Bun.sleep(500);
        const next = await readings.read();
        if (next.offlineQueues < b.offlineQueues) fellAt = performance.now();
        b = next;
      }
      return b;
    },
    figures() {
      const out: Record<string, number> = {};
      for (const [when, b] of [
        ["Before", readings.before],
        ["Peak", readings.peak],
        ["After", readings.after],
      ] as const) {
        if (!b) continue;
        out[`queues${when}`] = b.offlineQueues;
        out[`queuedMessages${when}`] = b.offlineMessages;
        out[`brokerQueueProcsMB${when}`] = Math.round((b.queueProcsBytes / MB) * 10) / 10;
        out[`brokerTotalMB${when}`] = Math.round((b.totalBytes / MB) * 10) / 10;
      }
      return out;
    },
  };
  return readings;
}
