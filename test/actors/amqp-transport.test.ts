import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import net from "node:net";
import { AmqpTransport } from "../../actors/amqp-transport.ts";
import type { EnvelopeFrame, Frame } from "../../actors/transport.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";

/** A push frame as a node sends another node's gateway: one 100-byte ciphertext, about 560 bytes of JSON. */
function pushFrame(): EnvelopeFrame {
  return {
    t: "env",
    keys: ["gateway:b"],
    hops: 1,
    msg: {
      type: "push",
      userId: randomUUID(),
      deviceId: 1,
      connectionId: randomUUID(),
      envelopes: [
        {
          id: randomUUID(),
          senderUser: randomUUID(),
          senderDevice: 1,
          recipientUser: randomUUID(),
          recipientDevice: 1,
          groupId: null,
          ts: Date.now(),
          type: 2,
          body: Buffer.alloc(100, 7).toString("base64"),
        },
      ],
    },
  };
}

/**
 * Records the size of every socket write this process makes while `sink` is set. Installed before
 * the transports connect: a socket takes its `write` when it is created.
 */
let sink: number[] | undefined;
const originalWrite = net.Socket.prototype.write;
function countWrites(): void {
  net.Socket.prototype.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]) {
    sink?.push(typeof chunk === "string" ? Buffer.byteLength(chunk) : ((chunk as Uint8Array)?.length ?? 0));
    return (originalWrite as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof originalWrite;
}

/** Sizes of the socket writes this process makes (both transports' connections) while `run` runs. */
async function socketWrites(run: () => Promise<void>): Promise<number[]> {
  const sizes: number[] = [];
  sink = sizes;
  try {
    await run();
  } finally {
    sink = undefined;
  }
  return sizes;
}

describe("AmqpTransport frame size", () => {
  const prefix = runPrefix();
  const received: Frame[][] = [];
  let a: AmqpTransport;
  let b: AmqpTransport;

  beforeAll(async () => {
    countWrites();
    a = new AmqpTransport({ nodeId: "a", url: AMQP_URL, prefix });
    b = new AmqpTransport({ nodeId: "b", url: AMQP_URL, prefix });
    await a.start(
      async () => {},
      () => {},
    );
    await b.start(
      async (frames) => {
        received.push(frames);
      },
      () => {},
    );
  });

  afterAll(async () => {
    await a.stop();
    await b.stop();
    net.Socket.prototype.write = originalWrite;
  });

  /** Sends one transfer from a to b and waits (up to 30 s) until b handled it. */
  async function transfer(frames: Frame[]): Promise<Frame[]> {
    const before = received.length;
    await a.send("b", frames);
    for (let waited = 0; received.length === before && waited < 30_000; waited += 10) await Bun.sleep(10);
    expect(received.length).toBe(before + 1);
    return received[before] as Frame[];
  }

  test("a full flat-out transfer (50 push frames, about 28 KB) is written as one body frame, not four 8 KiB ones", async () => {
    const frames = Array.from({ length: 50 }, pushFrame);
    const bytes = Buffer.byteLength(JSON.stringify(frames));
    expect(bytes).toBeGreaterThan(3 * 8192);
    await transfer(frames); // the publisher's channel is open before writes are counted
    const sizes = await socketWrites(async () => {
      expect(await transfer(frames)).toEqual(frames);
    });
    // Method, header and acks are small; the body goes in frames of at most the negotiated frame
    // size: one frame now, four with rabbitmq-client's default of 8 KiB.
    const bodyWrites = sizes.filter((size) => size > 1024);
    expect(bodyWrites).toHaveLength(1);
    expect(bodyWrites[0]).toBeGreaterThan(bytes);
  });

  test("a transfer larger than one frame (about 290 KB) still arrives whole and in order", async () => {
    const frames = Array.from({ length: 512 }, pushFrame);
    expect(Buffer.byteLength(JSON.stringify(frames))).toBeGreaterThan(2 * 131_072);
    expect(await transfer(frames)).toEqual(frames);
  });
});
