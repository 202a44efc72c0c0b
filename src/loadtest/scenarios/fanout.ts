import { randomUUID } from "node:crypto";
import { plainBody } from "../load.ts";
import {
  connectAll,
  makeUsers,
  type PhaseResult,
  type ScenarioContext,
  settleDown,
  summarise,
  trackerStatus,
} from "../phase.ts";
import { selfCpu } from "../process-stats.ts";
import { LoadSocket } from "../socket.ts";
import { Tracker } from "../tracker.ts";

/** Pause between two group messages, so each one's fan-out is timed on its own. */
const GAP_MS = 50;
const PER_MESSAGE_TIMEOUT_MS = 10_000;

/**
 * Group fan-out: one sender, a group of N members (the sender included, so N − 1 receiving
 * devices), all online. Messages go one at a time: each is sent, then the harness waits until
 * every member has it. `allDelivered` is send → last member's delivery.
 */
export async function fanout(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const results: PhaseResult[] = [];
  for (const size of ctx.options.groupSizes) results.push(await fanoutOnce(ctx, size));
  return results;
}

async function fanoutOnce(ctx: ScenarioContext, size: number): Promise<PhaseResult> {
  const { options, system, progress } = ctx;
  const users = await makeUsers(ctx, size);
  const [owner, ...members] = users;
  if (!owner) throw new Error("a group needs at least one member");
  const groupId = await system.target.createGroup(owner, members);
  const sockets = await connectAll(ctx, users, `${size} members`, (d) => LoadSocket.open(system.target, d));
  const sender = sockets[0] as LoadSocket;
  await settleDown(ctx);
  const body = plainBody(options.size);
  const tracker = new Tracker();
  for (const s of sockets) s.tracker = tracker;
  await system.sampler.start();
  const cpu = selfCpu();
  progress.start(`${system.name} fanout ${size}`, trackerStatus(tracker));
  const start = performance.now();
  try {
    for (let i = 0; i < options.groupMessages; i++) {
      const id = randomUUID();
      tracker.sentOne(id, size - 1);
      sender.send(JSON.stringify({ type: "send", id, to: { group: groupId }, message: { type: 7, body } }));
      const deadline = performance.now() + PER_MESSAGE_TIMEOUT_MS;
      while (!tracker.settled && performance.now() < deadline) await Bun.sleep(1);
      await Bun.sleep(GAP_MS);
    }
    const deadline = performance.now() + options.drainTimeoutS * 1000;
    while (!tracker.settled && performance.now() < deadline) await Bun.sleep(20);
  } finally {
    progress.stop();
  }
  const sendingMs = performance.now() - start;
  const harnessCpu = cpu();
  const server = await system.sampler.finish();
  const result = summarise(ctx, `fanout ${size}`, tracker, sendingMs, server, harnessCpu);
  // Added to what summarise put there (the CPU-seconds per 1,000 deliveries), not in its place.
  result.extra = { ...result.extra, members: size, recipients: size - 1 };
  // Throughput while fanning out: deliveries over the time the messages were actually in flight.
  const busyS = (tracker.completeLatency.summary().p50 * options.groupMessages) / 1000;
  if (busyS > 0) result.extra.deliveriesPerBusySec = Math.round(tracker.delivered / busyS);
  await Promise.all(sockets.map((s) => s.close()));
  return result;
}
