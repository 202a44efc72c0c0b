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
import type { VirtualDevice } from "../targets.ts";

/** What the recipient should decrypt for message `id` (`--e2ee`). */
const plaintextFor = (id: string, padding: string) => `loadtest ${id} ${padding}`;

/** A route from `sender` to `recipient`: plain payloads, or real Signal ciphertext with `--e2ee`. */
function route(sender: LoadSocket, recipient: VirtualDevice, body: string): Route {
  const signal = sender.device.signal;
  if (!signal) {
    return {
      sender,
      expected: 1,
      frame: (id) => directFrame(id, recipient.userId, recipient.deviceId, body),
    };
  }
  return {
    sender,
    expected: 1,
    frame: async (id) => {
      const messages = await signal.encrypt(recipient.userId, plaintextFor(id, body));
      return JSON.stringify({ type: "send", id, to: { user: recipient.userId }, messages });
    },
  };
}

/**
 * 1:1 online: users/2 senders each write to their own online recipient. Phases: a short warm-up
 * (actors activated, sessions started), then flat out, then — with `--rate half` — a fixed rate of
 * half the flat-out figure, where latency is read; or one phase at `--rate`.
 */
export async function oneToOne(ctx: ScenarioContext): Promise<PhaseResult[]> {
  const { options, system } = ctx;
  const e2ee = options.e2ee && system.name === "clearbox";
  const pairs = Math.floor(options.users / 2);
  const users = await makeUsers(ctx, pairs * 2, e2ee);
  const sockets = await connectAll(ctx, users, "devices", (d) => LoadSocket.open(system.target, d));
  const senders = sockets.slice(0, pairs);
  const recipients = sockets.slice(pairs);
  const body = plainBody(options.size);
  if (e2ee) {
    for (const socket of recipients) {
      const signal = socket.device.signal;
      socket.verify = async (frame) => {
        if (!signal || !frame.from || !frame.envelope) return false;
        const text = await signal.decryptText({ from: frame.from, envelope: frame.envelope });
        return text === plaintextFor(frame.id ?? "", body);
      };
    }
  }
  const routes = senders.map((s, i) => route(s, (recipients[i] as LoadSocket).device, body));
  const results: PhaseResult[] = [];
  try {
    const base = { routes, window: options.window, durationMs: options.durationS * 1000 };
    results.push(
      await measure(ctx, "warm-up", sockets, {
        ...base,
        window: 1,
        maxMessages: pairs * 2,
        durationMs: 30_000,
      }),
    );
    await settleDown(ctx);
    if (options.rate === "half" || options.rate === undefined) {
      const peak = await measure(ctx, "flat-out", sockets, { ...base, maxMessages: options.messages });
      results.push(peak);
      // Peak = what was carried end to end: a cluster can accept faster than it delivers.
      const sustained = Math.min(peak.acceptedPerSec, peak.msgsPerSec);
      if (options.rate === "half" && sustained > 0) {
        const rate = Math.max(1, Math.floor(sustained / 2));
        results.push(
          await measure(ctx, "half-peak", sockets, { ...base, rate, maxMessages: options.messages }),
        );
      }
    } else {
      results.push(
        await measure(ctx, `rate ${options.rate}/s`, sockets, {
          ...base,
          rate: options.rate,
          maxMessages: options.messages,
        }),
      );
    }
  } finally {
    await Promise.all(sockets.map((s) => s.close()));
    for (const u of users) u.signal?.close();
  }
  return results;
}
