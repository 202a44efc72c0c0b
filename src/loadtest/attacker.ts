import { randomUUID } from "node:crypto";
import type { Target, VirtualDevice } from "./targets.ts";

/** What the attacker needs: the node to attack, an account of its own, and the admin listener if known. */
export interface AttackerOptions {
  url: string;
  /** The attacker's own device (its token for `DELETE /v1/me` guesses and its WebSocket). */
  device: VirtualDevice;
  target: Target;
  adminUrl?: string;
  /** HTTP loops sending hostile requests flat out, one request in flight each. */
  loops: number;
}

/** What the attack sent and how the server answered, by status. */
export interface AttackReport {
  requests: number;
  frames: number;
  /** Requests answered with each status (400, 415, 401, 429, ...); `0` = transport error. */
  statuses: Record<string, number>;
  /** Frames answered with each `error` code. */
  frameErrors: Record<string, number>;
  perSecond: number;
}

const nestedObjects = (depth: number) => `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`;
const nestedArrays = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;
const json = { "content-type": "application/json" };

/**
 * The hostile inputs of issue 13, one request each: bodies that cost the framework quadratic time
 * (12,000 nested objects, 72 KB) or a stack overflow (a 100,000-deep array), a cross-site form, text
 * PostgreSQL cannot store, password guessing at login and at erasure, and wrong admin tokens.
 */
function hostileRequests(options: AttackerOptions): (() => Promise<Response>)[] {
  const { url, device, adminUrl } = options;
  const victim = `victim_${randomUUID().slice(0, 8)}`;
  let guess = 0;
  const requests: (() => Promise<Response>)[] = [
    () => fetch(`${url}/v1/accounts`, { method: "POST", headers: json, body: nestedObjects(12_000) }),
    () => fetch(`${url}/v1/sessions`, { method: "POST", headers: json, body: nestedArrays(100_000) }),
    () =>
      fetch(`${url}/v1/accounts`, {
        method: "POST",
        body: new URLSearchParams({ username: `form_${randomUUID().slice(0, 8)}`, password: "password123" }),
      }),
    () =>
      fetch(`${url}/v1/sessions`, {
        method: "POST",
        headers: json,
        body: JSON.stringify({
          username: victim,
          password: "password123",
          registrationId: 7,
          deviceName: "x\u0000",
        }),
      }),
    () =>
      fetch(`${url}/v1/sessions`, {
        method: "POST",
        headers: json,
        body: JSON.stringify({ username: victim, password: `guess number ${guess++}` }),
      }),
    () =>
      fetch(`${url}/v1/me`, {
        method: "DELETE",
        headers: { ...json, authorization: `Bearer ${device.token}` },
        body: JSON.stringify({ password: `guess number ${guess++}` }),
      }),
  ];
  if (adminUrl) {
    requests.push(() =>
      fetch(`${adminUrl}/metrics`, { headers: { authorization: "Bearer wrong-token-0123456789" } }),
    );
  }
  return requests;
}

/** Hostile frames: deep nesting, unstorable text, and presence watch lists of 1,000 random ids. */
const hostileFrames = [
  () => nestedArrays(100_000),
  () => `{"type":"ping","x":${nestedObjects(12_000)}}`,
  () => '{"type":"ping\\u0000"}',
  () => JSON.stringify({ type: "presence.watch", users: Array.from({ length: 1000 }, () => randomUUID()) }),
];

/**
 * A client that sends hostile inputs flat out until stopped: `loops` HTTP loops (each cycling
 * through `hostileRequests`) and one WebSocket sending hostile frames, each followed by a ping so
 * one is in flight at a time. It never waits on the legitimate traffic it runs beside.
 */
export class Attacker {
  private running = false;
  private readonly loops: Promise<void>[] = [];
  private readonly report: AttackReport = {
    requests: 0,
    frames: 0,
    statuses: {},
    frameErrors: {},
    perSecond: 0,
  };
  private started = 0;
  private ws: WebSocket | undefined;

  constructor(private readonly options: AttackerOptions) {}

  async start(): Promise<void> {
    this.running = true;
    this.started = performance.now();
    const requests = hostileRequests(this.options);
    for (let loop = 0; loop < this.options.loops; loop++) this.loops.push(this.httpLoop(requests, loop));
    this.loops.push(this.frameLoop());
  }

  private count(status: number) {
    this.report.requests++;
    this.report.statuses[status] = (this.report.statuses[status] ?? 0) + 1;
  }

  private async httpLoop(requests: (() => Promise<Response>)[], offset: number): Promise<void> {
    for (let i = offset; this.running; i++) {
      try {
        const res = await (requests[i % requests.length] as () => Promise<Response>)();
        await res.arrayBuffer();
        this.count(res.status);
      } catch {
        this.count(0);
      }
    }
  }

  private async frameLoop(): Promise<void> {
    const { url, headers } = this.options.target.socket(this.options.device);
    const ws = new WebSocket(url, headers ? ({ headers } as unknown as string[]) : undefined);
    this.ws = ws;
    let ponged: (() => void) | undefined;
    ws.addEventListener("message", (event) => {
      const text = String(event.data);
      if (text === '{"type":"pong"}') ponged?.();
      else if (text.startsWith('{"type":"error"')) {
        const code = (JSON.parse(text) as { code: string }).code;
        this.report.frameErrors[code] = (this.report.frameErrors[code] ?? 0) + 1;
      }
    });
    const opened = await new Promise<boolean>((resolve) => {
      ws.addEventListener("open", () => resolve(true), { once: true });
      ws.addEventListener("error", () => resolve(false), { once: true });
      ws.addEventListener("close", () => resolve(false), { once: true });
    });
    for (let i = 0; opened && this.running && ws.readyState === WebSocket.OPEN; i++) {
      const pong = new Promise<void>((resolve) => {
        ponged = resolve;
        setTimeout(resolve, 2000);
      });
      ws.send((hostileFrames[i % hostileFrames.length] as () => string)());
      ws.send('{"type":"ping"}');
      this.report.frames++;
      await pong;
    }
  }

  /** Stops every loop and returns what was sent and answered. */
  async stop(): Promise<AttackReport> {
    this.running = false;
    this.ws?.close();
    await Promise.all(this.loops);
    const seconds = (performance.now() - this.started) / 1000;
    this.report.perSecond =
      seconds > 0 ? Math.round((this.report.requests + this.report.frames) / seconds) : 0;
    return this.report;
  }
}
