import { expect } from "bun:test";
import type { TestSocket } from "./ws.ts";

/**
 * Each recipient's socket (same index) gets exactly the ids accepted for that recipient, each
 * once: waits for them all (up to 30 s each), acks them, then, after a pause, checks that no
 * second copy came (a repeat would be a second push or a flush of something already pushed).
 */
export async function expectEachOnce(
  recipients: readonly { userId: string }[],
  sockets: readonly TestSocket[],
  accepted: ReadonlyMap<string, readonly string[]>,
): Promise<void> {
  for (const [i, recipient] of recipients.entries()) {
    const want = accepted.get(recipient.userId) ?? [];
    const frames = await sockets[i].messages(want.length, 30_000);
    sockets[i].send({ type: "ack", ids: frames.map((f) => f.id) });
    expect(frames.map((f) => f.id).sort()).toEqual([...want].sort());
  }
  await Bun.sleep(500);
  for (const socket of sockets) expect(socket.pendingMessages()).toEqual([]);
}
