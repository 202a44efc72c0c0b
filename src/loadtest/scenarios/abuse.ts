import { Attacker, type AttackReport } from "../attacker.ts";
import { directFrame, plainBody, type Route } from "../load.ts";
import {
  connectAll,
  makeUsers,
  measure,
  type PhaseResult,
  type ScenarioContext,
  settleDown,
} from "../phase.ts";
import { LoadSocket } from "../socket.ts";

/** Fixed rate of the legitimate traffic when `--rate` names none (msgs/s). */
const DEFAULT_RATE = 200;

/**
 * Abuse (issue 13): users/2 legitimate 1:1 pairs send at a fixed rate, measured twice with the same
 * rate and duration: alone, then while an attacker in this process (`src/loadtest/attacker.ts`,
 * `--abusers` HTTP loops and one WebSocket) sends hostile inputs flat out. The two phases' p99 say
 * what the abuse costs legitimate users; the second phase's `other` column counts the attack and
 * the server's answers by status.
 */
export async function abuse(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const { options, system } = ctx;
  const rate = typeof options.rate === "number" ? options.rate : DEFAULT_RATE;
  const pairs = Math.floor(options.users / 2);
  const [attackerDevice, ...users] = await makeUsers(ctx, pairs * 2 + 1);
  if (!attackerDevice) throw new Error("no attacker account");
  const sockets = await connectAll(ctx, users, "devices", (d) => LoadSocket.open(system.target, d));
  const senders = sockets.slice(0, pairs);
  const recipients = sockets.slice(pairs);
  const body = plainBody(options.size);
  const routes: Route[] = senders.map((sender, i) => {
    const to = (recipients[i] as LoadSocket).device;
    return { sender, expected: 1, frame: (id) => directFrame(id, to.userId, to.deviceId, body) };
  });
  const base = { routes, window: options.window, durationMs: options.durationS * 1000 };
  const results: PhaseResult[] = [];
  try {
    results.push(
      await measure(ctx, "warm-up", sockets, {
        ...base,
        window: 1,
        maxMessages: pairs * 2,
        durationMs: 30_000,
      }),
    );
    await settleDown(ctx);
    results.push(
      await measure(ctx, "legitimate only", sockets, { ...base, rate, maxMessages: options.messages }),
    );
    const attacker = new Attacker({
      url: attackerDevice.url,
      device: attackerDevice,
      target: system.target,
      adminUrl: system.adminUrl,
      loops: options.abusers,
    });
    await attacker.start();
    let underAttack: PhaseResult;
    let report: AttackReport;
    try {
      underAttack = await measure(ctx, "legitimate + abuse", sockets, {
        ...base,
        rate,
        maxMessages: options.messages,
      });
    } finally {
      report = await attacker.stop();
    }
    ctx.progress.note(`attack: ${JSON.stringify(report)}`);
    results.push({
      ...underAttack,
      extra: {
        ...underAttack.extra,
        hostileRequests: report.requests,
        hostileFrames: report.frames,
        hostilePerSec: report.perSecond,
        ...Object.fromEntries(Object.entries(report.statuses).map(([s, n]) => [`http${s}`, n])),
        ...Object.fromEntries(Object.entries(report.frameErrors).map(([c, n]) => [`frame_${c}`, n])),
      },
    });
  } finally {
    await Promise.all(sockets.map((s) => s.close()));
  }
  return results;
}
