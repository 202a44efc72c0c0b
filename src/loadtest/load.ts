import { randomBytes, randomUUID } from "node:crypto";
import { stamp } from "../observability/stage-trace.ts";
import type { LoadSocket } from "./socket.ts";
import type { Tracker } from "./tracker.ts";

/** One sender and what it sends: `frame(id)` builds the `send` frame, `expected` deliveries follow. */
export interface Route {
  sender: LoadSocket;
  expected: number;
  frame(id: string): string | Promise<string>;
}

export interface LoadPlan {
  routes: Route[];
  tracker: Tracker;
  /** Messages per second for the whole run; undefined = flat out with `window` in flight per sender. */
  rate?: number;
  window: number;
  maxMessages: number;
  durationMs: number;
}

/** A plain test payload of `size` random bytes, base64, made once and reused (no crypto per message). */
export function plainBody(size: number): string {
  return randomBytes(size).toString("base64");
}

/** A 1:1 `send` frame for a recipient with one device. */
export function directFrame(id: string, to: string, deviceId: number, body: string, type = 3): string {
  return JSON.stringify({ type: "send", id, to: { user: to }, messages: [{ deviceId, type, body }] });
}

/** Per route, the last frame being built asynchronously (Signal encryption, `--e2ee`). */
const building = new WeakMap<Route, Promise<unknown>>();

/**
 * Sends one message on `route`, telling the tracker first. A frame built asynchronously (real
 * Signal encryption) takes its window slot at once, and a sender's frames are built one after
 * another: a session's ratchet must advance in order, and the window must bound what is queued.
 * A frame that cannot be built counts as rejected (`encrypt_failed`), not as lost.
 */
function fire(route: Route, tracker: Tracker, at?: number) {
  const id = randomUUID();
  tracker.sentOne(id, route.expected, at);
  stamp(id, "due", at);
  const previous = building.get(route);
  const frame = previous ? previous.then(() => route.frame(id)) : route.frame(id);
  if (typeof frame === "string") return route.sender.send(frame);
  route.sender.inFlight++;
  track(route, tracker, id, frame);
}

function track(route: Route, tracker: Tracker, id: string, frame: Promise<string>) {
  const sent = frame.then(
    (text) => route.sender.send(text, true),
    () => {
      route.sender.inFlight--;
      tracker.rejectedOne(id, "encrypt_failed");
      route.sender.onAnswer?.();
    },
  );
  building.set(route, sent);
  void sent.then(() => {
    if (building.get(route) === sent) building.delete(route);
  });
}

/**
 * Drives load until `maxMessages` were sent or `durationMs` passed, whichever is first. Flat out,
 * each sender keeps `window` sends unanswered. At a fixed rate, message k is due at start + k/rate
 * and its latency is measured from then, not from when the harness got round to it.
 */
export async function drive(plan: LoadPlan): Promise<{ sendingMs: number }> {
  const { routes, tracker, maxMessages, durationMs } = plan;
  const start = performance.now();
  const deadline = start + durationMs;
  let count = 0;
  if (plan.rate === undefined) {
    let stopped = false;
    await new Promise<void>((resolve) => {
      const stop = () => {
        if (stopped) return;
        stopped = true;
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(stop, durationMs);
      const refill = (route: Route) => {
        while (!stopped && route.sender.inFlight < plan.window) {
          if (count >= maxMessages || performance.now() >= deadline) return stop();
          count++;
          fire(route, tracker);
        }
      };
      for (const route of routes) route.sender.onAnswer = () => refill(route);
      for (const route of routes) refill(route);
    });
    for (const route of routes) route.sender.onAnswer = undefined;
  } else {
    const interval = 1000 / plan.rate;
    while (count < maxMessages) {
      const now = performance.now();
      if (now >= deadline) break;
      const due = Math.min(maxMessages, Math.floor((now - start) / interval) + 1);
      while (count < due) {
        fire(routes[count % routes.length] as Route, tracker, start + count * interval);
        count++;
      }
      await Bun.sleep(1);
    }
  }
  return { sendingMs: performance.now() - start };
}

/** Waits until every send is answered and every accepted message delivered, or `timeoutMs` passes. */
export async function settle(tracker: Tracker, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!tracker.settled && performance.now() < deadline) await Bun.sleep(20);
  return tracker.settled;
}
