import { connect, type Socket } from "node:net";

/**
 * The major protocol version a StartupMessage names in the high 16 bits of its code (PostgreSQL
 * manual, "Message Formats"). Any other first message starts no session to watch: an SSLRequest or
 * GSSENCRequest (the bytes after it are encrypted), a CancelRequest, or a direct TLS handshake.
 */
const PROTOCOL_MAJOR = 3;

/** Frontend message types each answered by one ReadyForQuery: Sync ('S'), Query ('Q'), FunctionCall ('F'). */
const ANSWERED_BY_READY = new Set([0x53, 0x51, 0x46]);
/**
 * Frontend Flush ('H'): the server owes what it has for the messages before it, with no
 * ReadyForQuery (postgres.js sends Parse, Describe, Flush to learn a new statement's types).
 */
const FLUSH = 0x48;
/** Frontend Terminate ('X'): the session ends, nothing more is owed. */
const TERMINATE = 0x58;
/** Backend ReadyForQuery ('Z'). */
const READY_FOR_QUERY = 0x5a;

/** The error a silent connection is destroyed with: what its waiting queries are rejected with. */
export class DatabaseStalledError extends Error {
  readonly code = "DATABASE_STALLED";
  constructor(stallMs: number) {
    super(`PostgreSQL sent nothing for ${stallMs / 1000} s while a query waited; the connection was dropped`);
    this.name = "DatabaseStalledError";
  }
}

/**
 * Reads a stream of typed protocol messages (a type byte, then an Int32 length that counts itself)
 * across chunk boundaries, calling `onType` with each message's type as its header arrives.
 */
class MessageTypes {
  private readonly header = Buffer.alloc(5);
  private have = 0;
  private skip = 0;

  constructor(private readonly onType: (type: number) => void) {}

  push(chunk: Uint8Array, from = 0): void {
    let i = from;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        continue;
      }
      this.header[this.have++] = chunk[i++] as number;
      if (this.have === 5) {
        this.have = 0;
        this.skip = Math.max(0, this.header.readInt32BE(1) - 4);
        this.onType(this.header[0] as number);
      }
    }
  }
}

/**
 * Destroys `socket` (a plaintext PostgreSQL connection, from its first byte) with a
 * {@link DatabaseStalledError} when the server owes an answer and has sent nothing for `stallMs`.
 * "Owes" counts ReadyForQuery messages: one for the StartupMessage, one per Sync, Query or
 * FunctionCall written, one less per ReadyForQuery read, so pipelined queries and a result that
 * stopped half-way count too, and a connection idle in a transaction (nothing owed) never does;
 * after a Flush the server owes an answer until its next byte.
 * Any byte from the server is progress: a long result that keeps coming is not a stall. A
 * connection that opens with anything but a StartupMessage (SSLRequest, GSSENCRequest,
 * CancelRequest, a direct TLS handshake) is not watched: its bytes are encrypted or it carries no
 * session.
 */
export function watchForStall(socket: Socket, stallMs: number): void {
  let owed = 0;
  let flushed = false;
  let watching = true;
  let first = true;
  let heardAt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const check = () => {
    timer = undefined;
    if (!watching || (owed === 0 && !flushed) || socket.destroyed) return;
    const silentMs = performance.now() - heardAt;
    if (silentMs >= stallMs) {
      watching = false;
      socket.destroy(new DatabaseStalledError(stallMs));
      return;
    }
    timer = setTimeout(check, stallMs - silentMs);
    timer.unref?.();
  };
  const owe = (flush = false) => {
    if (owed === 0 && !flushed) heardAt = performance.now();
    if (flush) flushed = true;
    else owed++;
    if (timer === undefined) {
      timer = setTimeout(check, stallMs);
      timer.unref?.();
    }
  };
  const outgoing = new MessageTypes((type) => {
    if (ANSWERED_BY_READY.has(type)) owe();
    else if (type === FLUSH) owe(true);
    else if (type === TERMINATE) watching = false;
  });
  const incoming = new MessageTypes((type) => {
    if (type === READY_FOR_QUERY && owed > 0) owed--;
  });
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  socket.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (watching) {
      const bytes = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Uint8Array);
      if (first) {
        first = false;
        const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        const length = view.length >= 8 ? view.readInt32BE(0) : 0;
        const code = view.length >= 8 ? view.readInt32BE(4) : 0;
        if (length < 8 || code >>> 16 !== PROTOCOL_MAJOR) {
          watching = false;
        } else {
          owe();
          outgoing.push(bytes, Math.min(length, bytes.length));
        }
      } else {
        outgoing.push(bytes);
      }
    }
    return write(chunk, ...rest);
  }) as Socket["write"];
  socket.on("data", (chunk: Buffer) => {
    if (!watching) return;
    heardAt = performance.now();
    flushed = false;
    incoming.push(chunk);
  });
  socket.once("close", () => {
    watching = false;
    clearTimeout(timer);
  });
}

/** What postgres.js hands its `socket` option: the parsed hosts and ports, or a Unix socket path. */
interface SocketTarget {
  host: string[];
  port: number[];
  path?: string | false;
}

/**
 * A postgres.js `socket` option (README, "Connection details": a function returning a socket) that
 * connects like the driver's own (`net.Socket`; hosts in turn when the URL names several; a Unix
 * socket when the host is a path) and puts {@link watchForStall} on each connection. Without it a
 * query whose connection went silent (a hung server, a link dropping every packet while the peer's
 * kernel still acknowledged) waited for good, holding its pool connection and its request with it;
 * postgres.js has no query timeout. The socket is returned connecting: postgres.js writes the
 * StartupMessage at once, `net.Socket` sends it on connect, and a failure to connect reaches the
 * driver as the socket's `error`, as with its own sockets.
 */
export function stallWatchedSocket(stallMs: number): (target: SocketTarget) => Socket {
  let next = 0;
  return (target) => {
    let socket: Socket;
    if (target.path) {
      socket = connect(target.path);
    } else {
      const i = next++ % target.host.length;
      const host = target.host[i] as string;
      const port = target.port[i] ?? (target.port[0] as number);
      socket = connect(port, host);
      Object.assign(socket, { host, port });
    }
    watchForStall(socket, stallMs);
    return socket;
  };
}
