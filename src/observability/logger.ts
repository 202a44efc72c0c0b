import pino, { type Logger } from "pino";

export type { Logger };

/** Paths pino blanks wherever they appear in a log object: credentials and message bodies never reach a log. */
const REDACT = [
  "password",
  "*.password",
  "token",
  "*.token",
  "accessToken",
  "*.accessToken",
  "refreshToken",
  "*.refreshToken",
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

/** One JSON logger per node; `destination` lets tests capture the output. */
export function createLogger(options: {
  level: string;
  nodeId: string;
  destination?: pino.DestinationStream;
}): Logger {
  return pino(
    {
      level: options.level,
      base: { node: options.nodeId },
      redact: { paths: REDACT, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination,
  );
}
