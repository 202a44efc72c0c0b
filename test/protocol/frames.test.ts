import { describe, expect, test } from "bun:test";
import {
  checkAck,
  checkDirectSend,
  decodeCheckedAck,
  decodeCheckedDirectSend,
  messageFrame,
  messageFrameText,
} from "../../src/protocol/index.ts";

const upper = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D";
const lower = "5f0e1d2c-3b4a-4968-8776-a5b4c3d2e1f0";
const mixed = "aBcDeF01-2345-4678-9AbC-DeF012345678";

describe("decoding a checked frame without TypeBox's Decode", () => {
  test("a 1:1 send decodes to exactly what checkDirectSend.Decode gives, ids in lower case", () => {
    const frames = [
      { type: "send", id: upper, to: { user: mixed }, messages: [{ deviceId: 1, type: 3, body: "AAAA" }] },
      {
        type: "send",
        id: lower,
        to: { user: lower },
        messages: [
          { deviceId: 2, type: 2, body: "YWJjZA==" },
          { deviceId: 127, type: 3, body: "YWJj" },
        ],
      },
    ];
    for (const frame of frames) {
      expect(checkDirectSend.Check(frame)).toBe(true);
      if (!checkDirectSend.Check(frame)) continue;
      const fast = decodeCheckedDirectSend(frame);
      expect(fast).toEqual(checkDirectSend.Decode(frame));
      expect(fast.id).toBe(frame.id.toLowerCase());
      expect(fast.to.user).toBe(frame.to.user.toLowerCase());
    }
  });

  test("an ack's messages decode to what checkAck.Decode gives, ids and senders in lower case, in order", () => {
    const frame = {
      type: "ack",
      messages: [
        { id: upper, from: { user: mixed, device: 1 } },
        { id: lower, from: { user: upper, device: 127 } },
        { id: mixed, from: { user: lower, device: 2 } },
      ],
    };
    expect(checkAck.Check(frame)).toBe(true);
    if (!checkAck.Check(frame)) return;
    const decoded = checkAck
      .Decode(frame)
      .messages.map((m) => ({ id: m.id, senderUser: m.from.user, senderDevice: m.from.device }));
    expect(decodeCheckedAck(frame)).toEqual(decoded);
    expect(decodeCheckedAck(frame)).toEqual([
      { id: upper.toLowerCase(), senderUser: mixed.toLowerCase(), senderDevice: 1 },
      { id: lower, senderUser: upper.toLowerCase(), senderDevice: 127 },
      { id: mixed.toLowerCase(), senderUser: lower, senderDevice: 2 },
    ]);
  });
});

describe("a message frame's text (messageFrameText)", () => {
  const base = {
    id: "5f0e1d2c-3b4a-4968-8776-a5b4c3d2e1f0",
    senderUser: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    senderDevice: 2,
    groupId: "abcdef01-2345-4678-9abc-def012345678" as string | null,
    ts: 1_764_540_000_000,
    type: 7,
    body: "c2VuZGVyIGtleSBjaXBoZXJ0ZXh0",
  };

  test("is JSON.stringify(messageFrame(envelope)), whatever field changed since the previous call", () => {
    const variants = [
      base,
      { ...base, id: "6f0e1d2c-3b4a-4968-8776-a5b4c3d2e1f0" },
      { ...base, senderUser: "1a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" },
      { ...base, senderDevice: 3 },
      { ...base, groupId: null },
      { ...base, groupId: "bbcdef01-2345-4678-9abc-def012345678" },
      { ...base, ts: base.ts + 1 },
      { ...base, type: 3 },
      { ...base, body: "b3RoZXI=" },
      base,
    ];
    for (const envelope of [...variants, ...variants.reverse()])
      expect(messageFrameText(envelope)).toBe(JSON.stringify(messageFrame(envelope)));
  });

  test("one group message to 1,000 member devices is serialised once, not once per device", () => {
    const envelopes = Array.from({ length: 1000 }, (_, i) => ({
      ...base,
      id: "7f0e1d2c-3b4a-4968-8776-a5b4c3d2e1f0",
      recipientUser: `user ${i}`,
      recipientDevice: 1,
    }));
    const stringify = JSON.stringify;
    let calls = 0;
    JSON.stringify = ((...args: Parameters<typeof stringify>) => {
      calls++;
      return stringify(...args);
    }) as typeof stringify;
    let texts: string[];
    try {
      texts = envelopes.map((e) => messageFrameText(e));
    } finally {
      JSON.stringify = stringify;
    }
    expect(calls).toBe(1);
    expect(new Set(texts)).toEqual(new Set([stringify(messageFrame(envelopes[0] as (typeof envelopes)[0]))]));
  });

  test("the last frame is not kept past the event loop's turn (an idle node holds no ciphertext for it)", async () => {
    const envelope = { ...base, id: "8f0e1d2c-3b4a-4968-8776-a5b4c3d2e1f0" };
    const stringify = JSON.stringify;
    let calls = 0;
    JSON.stringify = ((...args: Parameters<typeof stringify>) => {
      calls++;
      return stringify(...args);
    }) as typeof stringify;
    try {
      messageFrameText(envelope);
      messageFrameText({ ...envelope });
      expect(calls).toBe(1);
      await new Promise((resolve) => setImmediate(resolve));
      // Forgotten at the turn's end: the same fields are serialised again.
      messageFrameText({ ...envelope });
      expect(calls).toBe(2);
    } finally {
      JSON.stringify = stringify;
    }
  });
});
