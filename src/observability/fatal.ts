import type { Logger } from "./logger.ts";

/**
 * The process's last resort for an error nobody caught: an exception thrown from a callback
 * (`uncaughtException`) or a rejected promise nobody awaited (`unhandledRejection`). Such an error
 * leaves the node in a state no code path planned for (an actor half through a message, a
 * connection whose owner believes it open), so carrying on is not safe; a graceful stop could wait
 * on that very state. The error is logged once through `logger` (one `fatal` line, `kind` naming
 * which of the two it was; the logger's `err` serializer keeps the class, code and stack frames,
 * never the message, which may hold data) and the process exits with `exitCode` at once, for its
 * supervisor (systemd, Kubernetes) to restart it; clients reconnect and resend as after a crash.
 * Without it, Bun printed the error's message and a source excerpt on stderr, outside the
 * structured log, and exited 1 like any other failure. Node.js documents the same practice
 * ("Warning: Using 'uncaughtException' correctly": synchronous cleanup, then exit).
 * `exit` is `process.exit`, a parameter for tests only. Returns a function that removes the handlers.
 */
export function exitOnUncaught(
  logger: Logger,
  exitCode: number,
  exit: (code: number) => void = (code) => process.exit(code),
): () => void {
  const handle = (kind: "uncaughtException" | "unhandledRejection") => (error: unknown) => {
    logger.fatal({ err: error, kind }, "uncaught error: the node exits");
    logger.flush?.();
    exit(exitCode);
  };
  const onException = handle("uncaughtException");
  const onRejection = handle("unhandledRejection");
  process.on("uncaughtException", onException);
  process.on("unhandledRejection", onRejection);
  return () => {
    process.off("uncaughtException", onException);
    process.off("unhandledRejection", onRejection);
  };
}
