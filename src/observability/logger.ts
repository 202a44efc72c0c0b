import { ecsFormat } from "@elastic/ecs-pino-format";
import pino, { type Logger } from "pino";
import { type SerializedError, serializeError } from "./error-serializer.ts";

export type { Logger };

/** How log lines are shaped: pino's own JSON, or Elastic Common Schema JSON for Filebeat/Elasticsearch. */
export type LogFormat = "json" | "ecs";

/**
 * Paths pino blanks wherever they appear in a log object, in both formats: credentials, personal
 * identifiers and message bodies never reach a log. (pino redacts after the ECS formatter, which
 * only renames `err`, `req` and `res`, so the same paths hold in both.)
 */
const REDACT = [
  "password",
  "*.password",
  "passwordHash",
  "*.passwordHash",
  "username",
  "*.username",
  "token",
  "*.token",
  "accessToken",
  "*.accessToken",
  "refreshToken",
  "*.refreshToken",
  "adminToken",
  "*.adminToken",
  "jwtSecret",
  "*.jwtSecret",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "req.headers.authorization",
  "body",
  "*.body",
  "envelope",
  "*.envelope",
  "messages",
  "*.messages",
];

/**
 * Rewrites every error in a log object (at the top level or one object down) with
 * `serializeError`, whatever its key: pino's serializers apply by key and after the ECS formatter,
 * so an error under `error`, `reason` or `cause` would otherwise be written whole.
 */
function serializeErrors(obj: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [key, value] of Object.entries(obj)) {
    let next: unknown = value;
    if (value instanceof Error) next = serializeError(value);
    else if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      const inner = value as Record<string, unknown>;
      if (Object.values(inner).some((v) => v instanceof Error)) next = serializeErrors(inner);
    }
    if (next !== value) {
      out ??= { ...obj };
      out[key] = next;
    }
  }
  return out ?? obj;
}

/**
 * The one place a node's logger is built, for both formats, so what applies to every line
 * (level, redaction, and serializers) is set once. `destination` lets tests capture the output.
 * Errors, wherever they sit in a line, go through `serializeError` (class, code, constraint;
 * never a message, SQL or parameter); the actor system is given this same logger.
 * - `json`: pino's lines, `{"level":30,"time":"<ISO-8601>","node":"<NODE_ID>","msg":…}`.
 * - `ecs`: `@elastic/ecs-pino-format` (ECS 8: `@timestamp`, `log.level`, `message`, `ecs.version`,
 *   `service.name` = clearbox, `service.node.name` = NODE_ID; `err` becomes `error.*`).
 */
export function createLogger(options: {
  level: string;
  nodeId: string;
  format?: LogFormat;
  destination?: pino.DestinationStream;
}): Logger {
  const common = {
    level: options.level,
    hooks: {
      // pino writes an error given alone (`logger.error(err)`) with its message as the line's
      // message: it goes under `err` instead, with its class as the message.
      logMethod(this: Logger, args: unknown[], method: (...args: unknown[]) => void) {
        const [first, second, ...rest] = args;
        if (!(first instanceof Error)) return method.apply(this, args);
        const msg = typeof second === "string" ? second : serializeError(first).type;
        return method.apply(this, [{ err: first }, msg, ...rest]);
      },
    },
    redact: { paths: REDACT, censor: "[redacted]" },
    // Replaces pino's default `err` serializer (pino.stdSerializers.err keeps message and every field).
    serializers: { err: serializeError },
  };
  if (options.format === "ecs") {
    // No APM agent runs in ClearBox: skip the formatter's attempt to load elastic-apm-node.
    const ecs = ecsFormat({
      apmIntegration: false,
      serviceName: "clearbox",
      serviceNodeName: options.nodeId,
    });
    const ecsLog = ecs.formatters?.log;
    // The ECS formatter runs before pino's serializers and would write err.message and
    // err.stack as error.*: it gets the line without `err`, and `error` is ours.
    const log = (obj: Record<string, unknown>) => {
      const { err, ...rest } = serializeErrors(obj);
      const out = ecsLog ? ecsLog(rest) : rest;
      if (err === undefined) return out;
      // ECS names the frames error.stack_trace.
      const { stack, ...error } = (err instanceof Error ? serializeError(err) : err) as SerializedError;
      return { ...out, error: stack === undefined ? error : { ...error, stack_trace: stack } };
    };
    return pino({ ...ecs, ...common, formatters: { ...ecs.formatters, log }, base: {} }, options.destination);
  }
  return pino(
    {
      ...common,
      formatters: { log: serializeErrors },
      base: { node: options.nodeId },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination,
  );
}
