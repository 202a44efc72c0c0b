/**
 * The subset of pino's logger the actor runtime uses; pass a pino instance or child. Errors are
 * passed as they are, under `err`: the logger's error serializer decides what of them is written
 * (ClearBox's, `src/observability/error-serializer.ts`, keeps class, code and constraint and drops
 * messages, which may hold a message payload or a failed query's parameters).
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Discards everything: the default when no logger is given. */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

/**
 * An error's name, code and message, for an ask's failed reply to its caller (never for a log
 * line: logs get the error itself, see `Logger`).
 */
export function errorSummary(error: unknown): { name: string; code?: string; message: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return { name: error.name, code: typeof code === "string" ? code : undefined, message: error.message };
  }
  return { name: "NonError", message: String(error) };
}
