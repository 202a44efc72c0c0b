import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";

/**
 * A WebSocket client at the byte level, for tests of what the server does to a peer that reads
 * slowly, not at all, or answers pings its own way: a `node:net` socket the test reads with
 * `socket.read()` (it is left paused) and writes frames to itself. TestSocket (ws.ts) reads
 * everything at once and cannot play such a peer.
 */

/** A masked pong frame with an empty payload (RFC 6455 §5.5.3; unsolicited pongs are allowed). */
export const PONG = Buffer.from([0x8a, 0x80, 0, 0, 0, 0]);

/**
 * Connects to `baseUrl`, upgrades `/v1/ws` with `token` and reads the server's answer up to its
 * blank line (polling every 25 ms, at most 5 s). Resolves the socket, paused and with its errors
 * swallowed (the tests read `destroyed` and their own counts), and `early`: the bytes after the
 * answer that came in its chunk (frames the server wrote at once). Throws naming the status line
 * when the upgrade is refused.
 */
export async function openRawWebSocket(
  baseUrl: string,
  token: string,
): Promise<{ socket: Socket; early: Buffer }> {
  const { hostname, port } = new URL(baseUrl);
  const socket: Socket = connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.pause();
  socket.on("error", () => {});
  socket.write(
    [
      "GET /v1/ws HTTP/1.1",
      `Host: ${hostname}:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
      "Sec-WebSocket-Version: 13",
      `Authorization: Bearer ${token}`,
      "",
      "",
    ].join("\r\n"),
  );
  let head = "";
  let early: Buffer = Buffer.alloc(0);
  for (let i = 0; i < 200 && !head.includes("\r\n\r\n"); i++) {
    const chunk: Buffer | null = socket.read();
    if (chunk === null) {
      await Bun.sleep(25);
      continue;
    }
    head += chunk.toString("latin1");
    const end = head.indexOf("\r\n\r\n");
    if (end >= 0) early = chunk.subarray(chunk.length - (head.length - end - 4));
  }
  if (!head.startsWith("HTTP/1.1 101")) {
    socket.destroy();
    throw new Error(`upgrade refused: ${head.split("\r\n")[0]}`);
  }
  return { socket, early };
}

/**
 * Server → client WebSocket frames (RFC 6455 §5.2, unmasked) out of a byte stream: each complete
 * frame's opcode and payload, the rest kept for the next chunk.
 */
export function frameReader() {
  let pending = Buffer.alloc(0);
  return (chunk: Buffer): { opcode: number; payload: Buffer }[] => {
    pending = Buffer.concat([pending, chunk]);
    const frames: { opcode: number; payload: Buffer }[] = [];
    for (;;) {
      if (pending.length < 2) break;
      const opcode = (pending[0] as number) & 0x0f;
      let length = (pending[1] as number) & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (pending.length < 4) break;
        length = pending.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (pending.length < 10) break;
        length = Number(pending.readBigUInt64BE(2));
        offset = 10;
      }
      if (pending.length < offset + length) break;
      frames.push({ opcode, payload: pending.subarray(offset, offset + length) });
      pending = pending.subarray(offset + length);
    }
    return frames;
  };
}

/** A client → server text frame (RFC 6455 §5.3: masked), of at most 64 KiB. */
export function maskedText(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = randomBytes(4);
  const head =
    payload.length < 126
      ? Buffer.from([0x81, 0x80 | payload.length])
      : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  const body = Buffer.alloc(payload.length);
  for (let i = 0; i < payload.length; i++) body[i] = (payload[i] as number) ^ (mask[i % 4] as number);
  return Buffer.concat([head, mask, body]);
}
