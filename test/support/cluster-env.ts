import { randomBytes } from "node:crypto";

export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
export const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** Where a messaging suite runs: the embedded default, or PostgreSQL + Redis + RabbitMQ. */
export const STACKS = ["embedded", "services"] as const;
export type Stack = (typeof STACKS)[number];

/** Environment for a node of `stack`; `prefix` isolates this run's Redis keys and RabbitMQ queues. */
export function stackEnv(stack: Stack, prefix: string): Record<string, string> {
  if (stack === "embedded") return {};
  return {
    REDIS_URL,
    AMQP_URL,
    REDIS_PREFIX: `${prefix}:`,
    CLUSTER_HEARTBEAT_MS: "250",
    PRESENCE_LEASE_SECONDS: "3",
  };
}

/** A random prefix for one test file's Redis keys and RabbitMQ queues. */
export function runPrefix(): string {
  return `cbt${randomBytes(4).toString("hex")}`;
}
