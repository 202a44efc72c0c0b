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
/** Backend BackendKeyData ('K'): the backend's process id (Int32), then its cancel key. */
const BACKEND_KEY_DATA = 0x4b;

/**
 * Asks PostgreSQL, over a connection of its own, whether backend `pid` is running a statement
 * (`pg_stat_activity.state = 'active'`, lock waits included): resolves true if so, false if it
 * is idle, idle in a transaction or gone. {@link watchForStall} bounds it by its limit, aborts
 * `signal` when the limit passes (the probe should then drop its connection), and takes a
 * rejection, or no answer in time, as false.
 */
export type BackendActiveProbe = (pid: number, signal: AbortSignal) => Promise<boolean>;

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
 * across chunk boundaries, calling `onType` with each message's type as its header arrives. When
 * `onType` returns a number n > 0, the first n bytes of that message's body (fewer if it is
 * shorter) are handed to `onBody` once they have all arrived.
 */
class MessageTypes {
  private readonly header = Buffer.alloc(5);
  private have = 0;
  private skip = 0;
  private body: Buffer | undefined;
  private bodyHave = 0;

  constructor(
    private readonly onType: (type: number) => number,
    private readonly onBody: (body: Buffer) => void = () => {},
  ) {}

  push(chunk: Uint8Array, from = 0): void {
    let i = from;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        const { body } = this;
        if (body) {
          const take = Math.min(n, body.length - this.bodyHave);
          if (take > 0) {
            body.set(chunk.subarray(i, i + take), this.bodyHave);
            this.bodyHave += take;
            if (this.bodyHave === body.length) {
              this.body = undefined;
              this.onBody(body);
            }
          }
        }
        this.skip -= n;
        i += n;
        continue;
      }
      this.header[this.have++] = chunk[i++] as number;
      if (this.have === 5) {
        this.have = 0;
        this.skip = Math.max(0, this.header.readInt32BE(1) - 4);
        const want = Math.min(this.onType(this.header[0] as number), this.skip);
        if (want > 0) {
          this.body = Buffer.alloc(want);
          this.bodyHave = 0;
        }
      }
    }
  }
}

/**
 * Destroys `socket` (a plaintext PostgreSQL connection, from its first byte) with a
 * {@link DatabaseStalledError} when the server owes an answer, has sent nothing for `stallMs`, and
 * its backend is not known to be busy.
 * "Owes" counts ReadyForQuery messages: one for the StartupMessage, one per Sync, Query or
 * FunctionCall written, one less per ReadyForQuery read, so pipelined queries and a result that
 * stopped half-way count too, and a connection idle in a transaction (nothing owed) never does;
 * after a Flush the server owes an answer until its next byte.
 * Any byte from the server is progress: a long result that keeps coming is not a stall.
 * A statement that legitimately sends nothing for long (a lock wait, a long DELETE) looks the same
 * from here, so when the limit is reached the watch asks `probe` (if given, and once the backend's
 * pid is known from its BackendKeyData) whether that backend is active: if it answers true within
 * `stallMs` the connection is left alone and asked about again after another `stallMs` of silence;
 * false, a rejection or no answer in time (the server hung, the link is dead, the query or its
 * answer was lost) destroys it. Without `probe` the connection is destroyed at the limit.
 * A connection that opens with anything but a StartupMessage (SSLRequest, GSSENCRequest,
 * CancelRequest, a direct TLS handshake) is not watched: its bytes are encrypted or it carries no
 * session.
 */
export function watchForStall(socket: Socket, stallMs: number, probe?: BackendActiveProbe): void {
  let owed = 0;
  let flushed = false;
  let watching = true;
  let first = true;
  /** When the server last sent a byte, or the last probe found the backend active (performance.now()). */
  let heardAt = 0;
  let pid: number | undefined;
  let probing = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const schedule = (ms: number) => {
    timer = setTimeout(check, ms);
    timer.unref?.();
  };
  // Closed without an error, the error emitted from the watch's own `close` listener (added before
  // the driver's): postgres.js then rejects the waiting queries with it and moves the connection to
  // its closed queue in one go. With `destroy(error)` Bun runs every promise callback due between
  // `error` and `close`, so a query issued as soon as the rejection was seen went to the dead
  // connection, which postgres.js then closed without failing it: that query waited for good.
  let stalledError: DatabaseStalledError | undefined;
  const stalled = () => {
    watching = false;
    stalledError = new DatabaseStalledError(stallMs);
    socket.destroy();
  };
  const check = () => {
    timer = undefined;
    if (!watching || (owed === 0 && !flushed) || socket.destroyed) return;
    const silentMs = performance.now() - heardAt;
    if (silentMs < stallMs) return schedule(stallMs - silentMs);
    if (!probe || pid === undefined) return stalled();
    probing = true;
    const askedAt = performance.now();
    const abort = new AbortController();
    let bound: ReturnType<typeof setTimeout> | undefined;
    const answer = Promise.race([
      probe(pid, abort.signal).then(
        (active) => active === true,
        () => false,
      ),
      new Promise<false>((resolve) => {
        bound = setTimeout(() => {
          abort.abort();
          resolve(false);
        }, stallMs);
        bound.unref?.();
      }),
    ]);
    void answer.then((active) => {
      clearTimeout(bound);
      probing = false;
      if (!watching || (owed === 0 && !flushed) || socket.destroyed) return;
      if (heardAt >= askedAt) return check();
      if (!active) return stalled();
      heardAt = performance.now();
      schedule(stallMs);
    });
  };
  const owe = (flush = false) => {
    if (owed === 0 && !flushed) heardAt = performance.now();
    if (flush) flushed = true;
    else owed++;
    if (timer === undefined && !probing) schedule(stallMs);
  };
  const outgoing = new MessageTypes((type) => {
    if (ANSWERED_BY_READY.has(type)) owe();
    else if (type === FLUSH) owe(true);
    else if (type === TERMINATE) watching = false;
    return 0;
  });
  const incoming = new MessageTypes(
    (type) => {
      if (type === READY_FOR_QUERY && owed > 0) owed--;
      else if (type === BACKEND_KEY_DATA) return 4;
      return 0;
    },
    (body) => {
      pid = body.readInt32BE(0);
    },
  );
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
    if (stalledError && socket.listenerCount("error") > 0) socket.emit("error", stalledError);
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
export function stallWatchedSocket(
  stallMs: number,
  probeAt?: (server: ProbeTarget) => BackendActiveProbe,
): (target: SocketTarget) => Socket {
  let next = 0;
  return (target) => {
    let socket: Socket;
    let server: ProbeTarget;
    if (target.path) {
      socket = connect(target.path);
      server = { path: target.path };
    } else {
      const i = next++ % target.host.length;
      const host = target.host[i] as string;
      const port = target.port[i] ?? (target.port[0] as number);
      socket = connect(port, host);
      Object.assign(socket, { host, port });
      server = { host, port };
    }
    watchForStall(socket, stallMs, probeAt?.(server));
    return socket;
  };
}

/** The server a watched connection went to: the one its backend pid means something on. */
export type ProbeTarget = { host: string; port: number } | { path: string };

/**
 * The pool's {@link BackendActiveProbe}: opens a connection of its own (postgres.js, max 1, same
 * URL and credentials, but to `server`, the host the watched connection went to), reads
 * `pg_stat_activity` for the pid and closes it again. A backend counts as busy when its `state` is
 * `active` (running, or waiting on a lock or I/O) and it is not waiting to write to its client
 * (`wait_event = 'ClientWrite'`: the server is sending and nothing arrives, so the link is dead).
 * Seeing another session's `state` needs the same role or `pg_read_all_stats`; without it the
 * state reads as null and the connection is dropped at the limit, as without a probe.
 */
export function pgStatActivityProbe(databaseUrl: string): (server: ProbeTarget) => BackendActiveProbe {
  return (server) => async (pid, signal) => {
    const { default: postgres } = await import("postgres");
    const where = "path" in server ? { path: server.path } : { host: server.host, port: server.port };
    const sql = postgres(databaseUrl, {
      ...where,
      max: 1,
      prepare: false,
      onnotice: () => {},
      connection: { application_name: "clearbox-stall-probe" },
    });
    const drop = () => void sql.end({ timeout: 0 }).catch(() => {});
    signal.addEventListener("abort", drop, { once: true });
    try {
      const rows = await sql<{ busy: boolean | null }[]>`
        select state = 'active' and wait_event is distinct from 'ClientWrite' as busy
        from pg_stat_activity where pid = ${pid}`;
      return rows[0]?.busy === true;
    } finally {
      signal.removeEventListener("abort", drop);
      drop();
    }
  };
}
