/**
 * Reads the PostgreSQL frontend protocol (what a client sends; PostgreSQL docs, "Message Formats")
 * from a byte stream split anywhere, and reports each message: its type byte and, for Parse
 * ('P'), the statement's text. The stream's first message is the untyped StartupMessage (or an
 * SSLRequest before it), which is skipped.
 */
export function frontendReader(
  onMessage: (type: string, statement?: string) => void,
): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  let started = false;
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (!started) {
        if (pending.length < 8) return;
        const length = pending.readInt32BE(0);
        if (pending.length < length) return;
        // SSLRequest (80877103) is followed by the StartupMessage; anything else is the startup itself.
        if (pending.readInt32BE(4) !== 80877103) started = true;
        pending = pending.subarray(length);
        continue;
      }
      if (pending.length < 5) return;
      const length = pending.readInt32BE(1);
      if (pending.length < 1 + length) return;
      const type = String.fromCharCode(pending[0]);
      let statement: string | undefined;
      if (type === "P") {
        const body = pending.subarray(5, 1 + length);
        const nameEnd = body.indexOf(0);
        statement = body.subarray(nameEnd + 1, body.indexOf(0, nameEnd + 1)).toString("utf8");
      }
      pending = pending.subarray(1 + length);
      onMessage(type, statement);
    }
  };
}

/**
 * Reads the PostgreSQL backend protocol (what the server sends; PostgreSQL docs, "Message
 * Formats") from a byte stream split anywhere, and reports each message's type byte ('D' DataRow,
 * 'C' CommandComplete, 'Z' ReadyForQuery, …). For a connection without TLS: every backend message
 * is typed from the first byte.
 */
export function backendReader(onMessage: (type: string) => void): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (pending.length < 5) return;
      const length = pending.readInt32BE(1);
      if (pending.length < 1 + length) return;
      const type = String.fromCharCode(pending[0] as number);
      pending = pending.subarray(1 + length);
      onMessage(type);
    }
  };
}
