import { ecsFormat } from "@elastic/ecs-pino-format";
import pino, { type Logger } from "pino";

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
 * The one place a node's logger is built, for both formats, so what applies to every line
 * (level, redaction, and serializers) is set once. `destination` lets tests capture the output.
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
  const common = { level: options.level, redact: { paths: REDACT, censor: "[redacted]" } };
  if (options.format === "ecs") {
    // No APM agent runs in ClearBox: skip the formatter's attempt to load elastic-apm-node.
    const ecs = ecsFormat({
      apmIntegration: false,
      serviceName: "clearbox",
      serviceNodeName: options.nodeId,
    });
    return pino({ ...ecs, ...common, base: {} }, options.destination);
  }
  return pino(
    { ...common, base: { node: options.nodeId }, timestamp: pino.stdTimeFunctions.isoTime },
    options.destination,
  );
}
