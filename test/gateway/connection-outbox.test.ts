import { describe, expect, test } from "bun:test";
import { DeviceConnection, type DeviceSocket } from "../../src/gateway/connection.ts";
import { TokenBucket } from "../../src/gateway/token-bucket.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { MessageTallies } from "../../src/observability/metrics.ts";

/** A connection over a socket stand-in that records each write (corked writes as one entry) and the close. */
function connection() {
  const writes: string[][] = [];
  let corked: string[] | undefined;
  const events: string[] = [];
  const ws = {
    data: {},
    send(text: string) {
      if (corked) corked.push(text);
      else writes.push([text]);
      events.push("send");
      return text.length;
    },
    cork(fn: () => void) {
      corked = [];
      fn();
      writes.push(corked);
      corked = undefined;
    },
    close(code: number) {
      events.push(`close ${code}`);
    },
  } as unknown as DeviceSocket;
  const conn = new DeviceConnection(
    ws,
    { userId: "u1", deviceId: 1 },
    () => new TokenBucket(1, 1),
    "c1",
    new MessageTallies(),
  );
  return { conn, writes, events };
}

const envelope = (id: string): StoredEnvelope => ({
  id,
  senderUser: "u2",
  senderDevice: 1,
  recipientUser: "u1",
  recipientDevice: 1,
  groupId: null,
  ts: 1,
  type: 3,
  body: "QUJD",
});

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("DeviceConnection writes", () => {
  test("frames queued in one turn go out in one corked write, in the order queued", async () => {
    const { conn, writes } = connection();
    expect(conn.send({ type: "accepted", id: "a", ts: 1 })).toBe(true);
    expect(conn.deliver([envelope("m1"), envelope("m2")], "live")).toBe(true);
    conn.send({ type: "pong" });
    expect(writes).toEqual([]);
    await nextTurn();
    expect(writes).toHaveLength(1);
    expect(writes[0]?.map((text) => JSON.parse(text).id ?? JSON.parse(text).type)).toEqual([
      "a",
      "m1",
      "m2",
      "pong",
    ]);
    conn.send({ type: "pong" });
    await nextTurn();
    expect(writes).toHaveLength(2);
  });

  test("a server close writes what is queued before the close frame", () => {
    const { conn, events } = connection();
    conn.send({ type: "error", code: "invalid", message: "bad" });
    conn.close(4400, "bye");
    expect(events).toEqual(["send", "close 4400"]);
  });

  test("nothing is written once the socket has closed", async () => {
    const { conn, writes } = connection();
    conn.send({ type: "pong" });
    conn.state = "closed";
    expect(conn.send({ type: "pong" })).toBe(false);
    expect(conn.deliver([envelope("m1")], "live")).toBe(false);
    await nextTurn();
    expect(writes).toEqual([]);
  });
});
