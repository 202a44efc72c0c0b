import { describe, expect, test } from "bun:test";
import { type Sent, STALL_MS, type Stream, summariseFault } from "../../src/loadtest/scenarios/chaos.ts";

/** A fault whose kill is at t=1000, service back at t=6000, sending stopped at t=10000. */
function fault(messages: Record<string, Sent>, streams: Stream[]) {
  return summariseFault({
    service: "redis",
    downS: 5,
    messages: Object.values(messages),
    streams,
    sentIds: new Map(Object.entries(messages)),
    fault: 0,
    killAt: 1000,
    backAt: 6000,
    stopAt: 10_000,
    drainMs: 500,
    clients: [],
    before: [],
    unexpected: 0,
    exits: [{ node: 2, code: 1, at: 3000 }],
  });
}

describe("chaos scenario: how a fault's traffic is counted", () => {
  test("lost, out of order, unanswered and rejected are told apart", () => {
    const messages: Record<string, Sent> = {
      a: { fault: 0, stream: 0, at: 100, acceptedSeq: 0, deliveredAt: 150 },
      b: { fault: 0, stream: 0, at: 200, acceptedSeq: 1, deliveredAt: 7000 },
      // Accepted after b, delivered before it: b arrives out of order.
      c: { fault: 0, stream: 0, at: 300, acceptedSeq: 2, deliveredAt: 6500 },
      // Accepted, never delivered.
      d: { fault: 0, stream: 1, at: 400, acceptedSeq: 0 },
      // Never answered.
      e: { fault: 0, stream: 1, at: 500 },
      f: { fault: 0, stream: 1, at: 600, rejected: "not_member" },
    };
    const streams: Stream[] = [
      { sender: 0, recipient: 1, accepted: 3, arrivals: ["a", "c", "b"] },
      { sender: 1, recipient: 0, accepted: 1, arrivals: [] },
    ];
    const result = fault(messages, streams);
    expect(result).toMatchObject({
      sent: 6,
      accepted: 4,
      rejected: { not_member: 1 },
      answered: 5,
      unanswered: 1,
      lost: 1,
      outOfOrder: 1,
      outOfOrderStreams: 1,
      duplicated: 0,
      nodeExits: ["node 2: 1"],
    });
  });

  test("recovery: deliveries resumed at the end of the longest gap after the kill", () => {
    const messages: Record<string, Sent> = {};
    // Deliveries every 10 ms until 1200 (in flight at the kill), then none until 6800, then again.
    let n = 0;
    for (let t = 900; t <= 1200; t += 10)
      messages[`m${n++}`] = { fault: 0, stream: 0, at: t - 5, acceptedSeq: n, deliveredAt: t };
    for (let t = 6800; t <= 9990; t += 10)
      messages[`m${n++}`] = { fault: 0, stream: 0, at: t - 5, acceptedSeq: n, deliveredAt: t };
    const streams: Stream[] = [{ sender: 0, recipient: 1, accepted: n, arrivals: Object.keys(messages) }];
    const result = fault(messages, streams);
    expect(result.deliveriesStopped).toBe(true);
    expect(result.longestDeliveryGapMs).toBe(5600);
    expect(result.recoveryFromKillMs).toBe(5800);
    expect(result.recoveryFromBackMs).toBe(800);
    expect(result.lost).toBe(0);
    expect(result.outOfOrder).toBe(0);
  });

  test("a fault that never stalls delivery reports no recovery time", () => {
    const messages: Record<string, Sent> = {};
    let n = 0;
    for (let t = 500; t < 10_000; t += STALL_MS / 2)
      messages[`m${n++}`] = { fault: 0, stream: 0, at: t - 5, acceptedSeq: n, deliveredAt: t };
    const result = fault(messages, [
      { sender: 0, recipient: 1, accepted: n, arrivals: Object.keys(messages) },
    ]);
    expect(result.deliveriesStopped).toBe(false);
    expect(result.recoveryFromKillMs).toBeNull();
    expect(result.recoveryFromBackMs).toBeNull();
  });
});
