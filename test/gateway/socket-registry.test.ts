import { describe, expect, test } from "bun:test";
import { DeviceConnection, type DeviceSocket } from "../../src/gateway/connection.ts";
import { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { TokenBucket } from "../../src/gateway/token-bucket.ts";
import { MessageTallies } from "../../src/observability/metrics.ts";

/** A connection over a socket stand-in that records its close (the registry never writes to it). */
function connection(userId: string, deviceId: number, id: string) {
  const closes: number[] = [];
  const ws = { close: (code: number) => closes.push(code), data: {} } as unknown as DeviceSocket;
  const conn = new DeviceConnection(
    ws,
    { userId, deviceId },
    () => new TokenBucket(1, 1),
    id,
    new MessageTallies(),
  );
  return { conn, closes };
}

describe("SocketRegistry", () => {
  test("one device, a second device, a replacement and removals keep the count and the lookups right", () => {
    const registry = new SocketRegistry();
    const one = connection("u1", 1, "c1");
    expect(registry.add(one.conn)).toBeUndefined();
    expect(registry.size).toBe(1);
    expect(registry.get("u1", 1)).toBe(one.conn);
    expect(registry.get("u1", 2)).toBeUndefined();
    expect(registry.status("u1", 1, "c1")).toBe("pending");
    expect(registry.status("u1", 1, "other")).toBe("gone");

    const two = connection("u1", 2, "c2");
    expect(registry.add(two.conn)).toBeUndefined();
    expect(registry.size).toBe(2);
    expect([...registry.values()]).toEqual([one.conn, two.conn]);

    const newer = connection("u1", 1, "c3");
    expect(registry.add(newer.conn)).toBe(one.conn);
    expect(registry.size).toBe(2);
    // The replaced socket's late removal leaves its successor in place.
    registry.remove(one.conn);
    expect(registry.size).toBe(2);
    expect(registry.get("u1", 1)).toBe(newer.conn);

    registry.remove(two.conn);
    expect(registry.size).toBe(1);
    expect([...registry.values()]).toEqual([newer.conn]);
    expect(registry.get("u1", 2)).toBeUndefined();
    registry.remove(newer.conn);
    expect(registry.size).toBe(0);
    expect([...registry.values()]).toEqual([]);
    expect(registry.get("u1", 1)).toBeUndefined();
  });

  test("a replacement of a user's only socket keeps the count; close reaches one device or all", () => {
    const registry = new SocketRegistry();
    const first = connection("u2", 1, "a");
    const second = connection("u2", 1, "b");
    registry.add(first.conn);
    expect(registry.add(second.conn)).toBe(first.conn);
    expect(registry.size).toBe(1);
    registry.remove(first.conn);
    expect(registry.get("u2", 1)).toBe(second.conn);

    const other = connection("u2", 7, "c");
    registry.add(other.conn);
    expect(registry.close({ userId: "u2", deviceId: 7 }, 4409, "replaced")).toBe(true);
    expect(other.closes).toEqual([4409]);
    expect(second.closes).toEqual([]);
    expect(registry.close({ userId: "u2" }, 4401, "revoked")).toBe(true);
    expect(second.closes).toEqual([4401]);
    expect(registry.close({ userId: "nobody" }, 4401, "revoked")).toBe(false);
  });
});
