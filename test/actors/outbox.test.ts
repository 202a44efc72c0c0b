import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { UnroutableError } from "../../actors/actor-error.ts";
import { AmqpTransport } from "../../actors/amqp-transport.ts";
import { Outbox } from "../../actors/outbox.ts";
import type { EnvelopeFrame, Frame, FrameHandler, Transport } from "../../actors/transport.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";

interface Transfer {
  nodeId: string;
  frames: Frame[];
  confirm: () => void;
  fail: (error: unknown) => void;
}

/**
 * Our own Transport port, in memory: records every transfer and leaves its confirmation to the
 * test, as a broker's publisher confirm would arrive later.
 */
class RecordingTransport implements Transport {
  readonly nodeId = "self";
  readonly transfers: Transfer[] = [];

  async start(_handler: FrameHandler): Promise<void> {}

  send(nodeId: string, frames: Frame[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.transfers.push({ nodeId, frames: [...frames], confirm: resolve, fail: reject });
    });
  }

  async adopt(): Promise<boolean> {
    return true;
  }

  async stop(): Promise<boolean> {
    return true;
  }

  async abort(): Promise<void> {}

  to(nodeId: string): Transfer[] {
    return this.transfers.filter((transfer) => transfer.nodeId === nodeId);
  }

  confirmAll(): void {
    for (const transfer of this.transfers) transfer.confirm();
  }
}

function envelope(n: number): EnvelopeFrame {
  return { t: "env", keys: [`user:${n}`], msg: n, hops: 1 };
}

function payloads(frames: Frame[]): unknown[] {
  return frames.map((frame) => (frame as EnvelopeFrame).msg);
}

/** Lets the outbox's end-of-turn flush run. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Resolves to how `promise` settled, without letting a rejection escape. */
function outcome(promise: Promise<void>): Promise<"confirmed" | unknown> {
  return promise.then(
    () => "confirmed",
    (error: unknown) => error,
  );
}

let transport: RecordingTransport;
let outbox: Outbox;

beforeEach(() => {
  transport = new RecordingTransport();
  outbox = new Outbox(transport);
});

afterEach(() => {
  transport.confirmAll();
});

describe("Outbox", () => {
  test("frames queued in one turn leave as one transfer per destination node, in queued order", async () => {
    for (let n = 0; n < 5; n++) void outbox.send(n % 2 === 0 ? "node-a" : "node-b", envelope(n));
    expect(transport.transfers).toHaveLength(0);
    await nextTurn();
    expect(transport.transfers).toHaveLength(2);
    expect(payloads(transport.to("node-a")[0].frames)).toEqual([0, 2, 4]);
    expect(payloads(transport.to("node-b")[0].frames)).toEqual([1, 3]);
  });

  test("a frame queued in a later turn goes in a new transfer", async () => {
    void outbox.send("node-a", envelope(1));
    await nextTurn();
    void outbox.send("node-a", envelope(2));
    await nextTurn();
    expect(transport.to("node-a").map((transfer) => payloads(transfer.frames))).toEqual([[1], [2]]);
  });

  test("a burst over 512 frames to one node is split into transfers that keep the queued order", async () => {
    for (let n = 0; n < 1200; n++) void outbox.send("node-a", envelope(n));
    await nextTurn();
    const transfers = transport.to("node-a");
    expect(transfers.map((transfer) => transfer.frames.length)).toEqual([512, 512, 176]);
    expect(transfers.flatMap((transfer) => payloads(transfer.frames))).toEqual(
      Array.from({ length: 1200 }, (_, n) => n),
    );
  });

  test("a send resolves only once its transfer is confirmed", async () => {
    let confirmed = false;
    const sent = outbox.send("node-a", envelope(1)).then(() => {
      confirmed = true;
    });
    await nextTurn();
    expect(confirmed).toBe(false);
    transport.to("node-a")[0].confirm();
    await sent;
    expect(confirmed).toBe(true);
  });

  test("a failing transfer rejects the senders of its frames and no one else", async () => {
    const toA = [outcome(outbox.send("node-a", envelope(1))), outcome(outbox.send("node-a", envelope(2)))];
    const toGone = [outcome(outbox.send("gone", envelope(3))), outcome(outbox.send("gone", envelope(4)))];
    await nextTurn();
    const refusal = new UnroutableError("gone");
    transport.to("gone")[0].fail(refusal);
    transport.to("node-a")[0].confirm();
    expect(await Promise.all(toA)).toEqual(["confirmed", "confirmed"]);
    const failures = await Promise.all(toGone);
    expect(failures[0]).toBe(refusal);
    expect(failures[1]).toBe(refusal);
  });

  test("a failed transfer nobody waits on raises no unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const record = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", record);
    try {
      void outbox.send("gone", envelope(1));
      await nextTurn();
      transport.to("gone")[0].fail(new UnroutableError("gone"));
      await nextTurn();
      await nextTurn();
    } finally {
      process.off("unhandledRejection", record);
    }
    expect(transport.to("gone")).toHaveLength(1);
    expect(unhandled).toEqual([]);
  });
});

describe("Outbox over RabbitMQ", () => {
  test("a frame the transport cannot encode rejects its senders instead of throwing from the flush", async () => {
    const rabbit = new AmqpTransport({ nodeId: "outbox-a", url: AMQP_URL, prefix: runPrefix() });
    await rabbit.start(
      async () => {},
      () => {},
    );
    const errors: unknown[] = [];
    const record = (reason: unknown) => errors.push(reason);
    process.on("uncaughtException", record);
    process.on("unhandledRejection", record);
    try {
      const amqpOutbox = new Outbox(rabbit);
      // JSON has no BigInt: the transport's encoding throws before anything reaches the broker.
      const sent = outcome(amqpOutbox.send("outbox-b", { t: "env", keys: ["user:1"], msg: 1n, hops: 1 }));
      const result = await sent;
      await nextTurn();
      expect(result).toBeInstanceOf(TypeError);
      expect(errors).toEqual([]);
    } finally {
      process.off("uncaughtException", record);
      process.off("unhandledRejection", record);
      await rabbit.stop();
    }
  });
});
