import { randomUUID } from "node:crypto";
import { api, registerAndLogin } from "../support/http.ts";
import type { TestNode } from "../support/node.ts";
import { ackOf, type Frame } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** Every ciphertext body starts with this text, so a test can look for bodies in the logs. */
const BODY_MARK = "fault-traffic-body-:-";
/** What every body's base64 starts with (BODY_MARK's length is a multiple of 3, so it encodes alone). */
export const BODY_MARK_BASE64 = Buffer.from(BODY_MARK).toString("base64");

/** How long a send may go unanswered before the harness counts it as never answered. */
const ANSWER_BOUND_MS = 15_000;

/** One connected device of the fault tests: sends on a schedule, dedupes and acks what it receives. */
class FaultClient {
  ws!: WebSocket;
  closed: { code: number; reason: string } | undefined;
  /** Stream (`<sender>><recipient or group>`) → ids in order of first arrival. */
  readonly arrivals = new Map<string, string[]>();
  private readonly seen = new Set<string>();
  duplicates = 0;
  private readonly replies = new Map<string, (frame: Frame) => void>();

  constructor(
    readonly userId: string,
    readonly token: string,
    readonly node: TestNode,
  ) {}

  async open(): Promise<void> {
    const url = new URL("/v1/ws", this.node.url.replace(/^http/, "ws"));
    this.ws = new WebSocket(url.toString(), {
      headers: { authorization: `Bearer ${this.token}` },
    } as unknown as string[]);
    this.ws.addEventListener("message", (event) => this.onFrame(JSON.parse(String(event.data)) as Frame));
    this.ws.addEventListener("close", (event) => {
      this.closed = { code: event.code, reason: event.reason };
    });
    await new Promise<void>((resolve, reject) => {
      this.ws.addEventListener("open", () => resolve(), { once: true });
      this.ws.addEventListener("error", () => reject(new Error("websocket upgrade refused")), { once: true });
    });
  }

  private onFrame(frame: Frame): void {
    if (frame.type === "message") {
      if (this.seen.has(frame.id)) this.duplicates++;
      else {
        this.seen.add(frame.id);
        const stream = `${frame.from.user}>${frame.group ?? this.userId}`;
        const list = this.arrivals.get(stream);
        if (list) list.push(frame.id);
        else this.arrivals.set(stream, [frame.id]);
      }
      this.ws.send(JSON.stringify(ackOf([frame])));
      return;
    }
    if ((frame.type === "accepted" || frame.type === "rejected" || frame.type === "error") && frame.id) {
      this.replies.get(frame.id)?.(frame);
    }
  }

  /** Sends `frame` and waits for the answer carrying its id, or undefined after `timeoutMs`. */
  request(frame: { id: string }, timeoutMs: number): Promise<Frame | undefined> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.replies.delete(frame.id);
        resolve(undefined);
      }, timeoutMs);
      this.replies.set(frame.id, (reply) => {
        clearTimeout(timer);
        this.replies.delete(frame.id);
        resolve(reply);
      });
      this.ws.send(JSON.stringify(frame));
    });
  }
}

/** What one sender's stream was: its recipients, and the ids it heard `accepted` for, in order. */
interface Stream {
  /** `<sender>><recipient>` or `<sender>><group>`. */
  key: string;
  group?: string;
  sender: FaultClient;
  recipients: FaultClient[];
  accepted: string[];
}

/** Counts of a run, for the assertions and the failure message. */
export interface TrafficReport {
  sends: number;
  accepted: number;
  /** Sends that got no answer at all within ANSWER_BOUND_MS (the bug the deadline fixes). */
  unanswered: number;
  /** `error internal` answers (retried with the same id). */
  retryableErrors: number;
  /** `rejected busy` answers (retried with the same id). */
  busy: number;
  /** Other rejections (a bug here: every send is well-formed). */
  rejected: string[];
  /** Accepted ids some recipient never got. */
  missing: number;
  /** The first few of them, as `<stream>@<recipient>: <id>`. */
  missingIds: string[];
  /** Streams whose first arrivals do not follow acceptance order, at some recipient. */
  outOfOrder: string[];
  /** Messages a client saw again after its first copy (deduped by id, as real clients do). */
  duplicates: number;
  /** Sockets that closed during the run. */
  closedSockets: { code: number; reason: string }[];
}

/**
 * A steady stream of 1:1 and group traffic between users spread over the given nodes: user i is
 * connected to node i mod n and sends to user i+1 (on another node); a group of one user per node
 * gets a message from each member at a slower rate. Every sender waits for each answer before its
 * next send (so acceptance order is well defined) and re-sends the same id after a retryable
 * answer; recipients dedupe by id and ack at once. Nobody reconnects: a socket that closes stays
 * closed and is reported.
 */
export class Traffic {
  private readonly clients: FaultClient[] = [];
  private readonly streams: Stream[] = [];
  private running = false;
  private loops: Promise<void>[] = [];
  private readonly report: Omit<
    TrafficReport,
    "missing" | "missingIds" | "outOfOrder" | "duplicates" | "closedSockets"
  > = {
    sends: 0,
    accepted: 0,
    unanswered: 0,
    retryableErrors: 0,
    busy: 0,
    rejected: [],
  };

  private constructor(private readonly nodes: TestNode[]) {}

  /** Registers `users` accounts (3 per node is plenty), opens their sockets and makes the group. */
  static async setUp(nodes: TestNode[], users = nodes.length * 3): Promise<Traffic> {
    const traffic = new Traffic(nodes);
    const http = api(nodes[0].url);
    for (let i = 0; i < users; i++) {
      const account = await registerAndLogin(http);
      traffic.clients.push(new FaultClient(account.userId, account.accessToken, nodes[i % nodes.length]));
    }
    await Promise.all(traffic.clients.map((c) => c.open()));
    for (let i = 0; i < users; i++) {
      const sender = traffic.clients[i];
      const recipient = traffic.clients[(i + 1) % users];
      traffic.streams.push({
        key: `${sender.userId}>${recipient.userId}`,
        sender,
        recipients: [recipient],
        accepted: [],
      });
    }
    const members = traffic.clients.slice(0, nodes.length);
    const created = await http.post(
      "/v1/groups",
      { name: "faults", members: members.slice(1).map((m) => m.userId) },
      members[0].token,
    );
    if (created.status !== 201) throw new Error(`group not created: ${created.status}`);
    const groupId = created.body.groupId as string;
    // Adding invites: each member accepts.
    for (const member of members.slice(1)) {
      const accepted = await http.post(`/v1/invitations/${groupId}/accept`, undefined, member.token);
      if (accepted.status >= 300) throw new Error(`invitation not accepted: ${accepted.status}`);
    }
    for (const member of members) {
      traffic.streams.push({
        key: `${member.userId}>${groupId}`,
        group: groupId,
        sender: member,
        recipients: members.filter((m) => m !== member),
        accepted: [],
      });
    }
    return traffic;
  }

  /** Starts every stream: one send per `intervalMs` per 1:1 stream, a third of that rate per group stream. */
  start(intervalMs = 50): void {
    this.running = true;
    this.loops = this.streams.map((stream) => this.run(stream, stream.group ? intervalMs * 3 : intervalMs));
  }

  /** Stops sending and waits for every stream's last send to be answered. */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  /** Accepted sends so far. */
  get accepted(): number {
    return this.report.accepted;
  }

  private async run(stream: Stream, intervalMs: number): Promise<void> {
    const { sender } = stream;
    let n = 0;
    while (this.running && !sender.closed) {
      const id = randomUUID();
      const frame = stream.group
        ? {
            type: "send",
            id,
            to: { group: stream.group },
            message: { type: 7, body: b64(`${BODY_MARK}g${n}`) },
          }
        : {
            type: "send",
            id,
            to: { user: stream.recipients[0].userId },
            messages: [{ deviceId: 1, type: 3, body: b64(`${BODY_MARK}m${n}`) }],
          };
      n++;
      this.report.sends++;
      for (;;) {
        if (sender.closed) return;
        const reply = await sender.request(frame, ANSWER_BOUND_MS);
        if (!reply) {
          this.report.unanswered++;
          console.log(
            `no answer within ${ANSWER_BOUND_MS} ms to ${id} (${stream.group ? "group" : "1:1"}) sent at ${new Date(Date.now() - ANSWER_BOUND_MS).toISOString()}`,
          );
          continue;
        }
        if (reply.type === "accepted") {
          stream.accepted.push(id);
          this.report.accepted++;
          break;
        }
        if (reply.type === "rejected" && reply.code === "busy") {
          this.report.busy++;
          await Bun.sleep(reply.retryAfterMs ?? 25);
          continue;
        }
        if (reply.type === "error") {
          this.report.retryableErrors++;
          await Bun.sleep(100);
          continue;
        }
        this.report.rejected.push(`${reply.code}`);
        break;
      }
      await Bun.sleep(intervalMs);
    }
  }

  /** The counts now: what is still missing, out of order or duplicated at the recipients. */
  check(): TrafficReport {
    let missing = 0;
    const missingIds: string[] = [];
    const outOfOrder: string[] = [];
    for (const stream of this.streams) {
      const accepted = new Set(stream.accepted);
      for (const recipient of stream.recipients) {
        // A recipient files arrivals under `<sender>><group, or itself>`: the stream's key.
        const arrivals = recipient.arrivals.get(stream.key) ?? [];
        const got = new Set(arrivals);
        const lost = stream.accepted.filter((id) => !got.has(id));
        missing += lost.length;
        for (const id of lost.slice(0, 5)) missingIds.push(`${stream.key}@${recipient.userId}: ${id}`);
        const inOrder = arrivals.filter((id) => accepted.has(id));
        const expected = stream.accepted.filter((id) => got.has(id));
        if (inOrder.join() !== expected.join()) outOfOrder.push(`${stream.key}@${recipient.userId}`);
      }
    }
    return {
      ...this.report,
      missing,
      missingIds,
      outOfOrder,
      duplicates: this.clients.reduce((sum, c) => sum + c.duplicates, 0),
      closedSockets: this.clients.flatMap((c) => (c.closed ? [c.closed] : [])),
    };
  }

  /** Waits until nothing accepted is missing (or `timeoutMs` passes); returns the final counts. */
  async settle(timeoutMs = 30_000): Promise<TrafficReport> {
    const deadline = Date.now() + timeoutMs;
    let report = this.check();
    while (report.missing > 0 && Date.now() < deadline) {
      await Bun.sleep(100);
      report = this.check();
    }
    return report;
  }

  /**
   * Envelopes still in the log for the test's users that were not acked, polled until none is left
   * or `timeoutMs` passes (acks are group-committed, so the last few take a moment).
   */
  async unackedInLog(timeoutMs = 15_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let left = 0;
      for (const client of this.clients) left += (await this.nodes[0].log.undelivered(client.userId)).length;
      if (left === 0 || Date.now() > deadline) return left;
      await Bun.sleep(200);
    }
  }

  /** Messages left in the test users' offline queues (RabbitMQ): all were delivered live or drained. */
  async leftInOfflineQueues(): Promise<number> {
    let left = 0;
    for (const client of this.clients) left += await this.nodes[0].offline.depth(client.userId, 1);
    return left;
  }

  /** Closes every socket. */
  close(): void {
    for (const client of this.clients) if (!client.closed) client.ws.close(1000, "done");
  }
}
