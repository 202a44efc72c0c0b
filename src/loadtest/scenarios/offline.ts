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
  });
  const answerDeadline = performance.now() + options.drainTimeoutS * 1000;
  while (tracker.unanswered > 0 && performance.now() < answerDeadline) await Bun.sleep(20);
  const queueMs = performance.now() - queueStart;
  progress.stop();
  const queuedRate = Math.round(tracker.accepted / (queueMs / 1000));
  progress.note(`${system.name}: ${tracker.accepted} messages queued for offline devices at ${queuedRate}/s`);

  progress.start(`${system.name} drain`, trackerStatus(tracker));
  const drainStart = performance.now();
  let inbox: LoadSocket[] = [];
  try {
    inbox = await Promise.all(recipients.map((d) => LoadSocket.open(system.target, d, tracker)));
    const deadline = performance.now() + Math.max(options.drainTimeoutS, 60) * 1000;
    while (!tracker.settled && performance.now() < deadline) await Bun.sleep(10);
  } finally {
    progress.stop();
  }
  const drainMs =
    (Number.isNaN(tracker.lastDeliveryAt) ? performance.now() : tracker.lastDeliveryAt) - drainStart;
  const server = await system.sampler.finish();
  const result = summarise(ctx, "drain", tracker, queueMs, server, cpu());
  result.msgsPerSec = drainMs > 0 ? Math.round(tracker.delivered / (drainMs / 1000)) : 0;
  result.extra = { queuedPerSec: queuedRate, drainMs: Math.round(drainMs), backlog: tracker.accepted };
  progress.note(
    `${system.name}: drained ${tracker.delivered} in ${Math.round(drainMs)} ms → ${result.msgsPerSec}/s`,
  );
  await Promise.all([...senders, ...inbox].map((s) => s.close()));
  return [result];
}
