import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { loadConfig } from "../../src/config/index.ts";

const ROOT = resolve(import.meta.dir, "../..");
const composeText = readFileSync(resolve(ROOT, "docker-compose.yml"), "utf8");
const compose = Bun.YAML.parse(composeText) as {
  services: Record<string, { environment?: Record<string, string>; image?: string; build?: string }>;
};

/** Resolves `${VAR:-default}` and `${VAR:?message}` the way compose would with the given variables. */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{(\w+)(?::([-?])([^}]*))?\}/g, (_, name: string, kind?: string, rest?: string) => {
    if (vars[name] !== undefined) return vars[name];
    if (kind === "-") return rest ?? "";
    throw new Error(`compose requires ${name}: ${rest}`);
  });
}

describe("docker-compose.yml", () => {
  test("runs ClearBox with PostgreSQL, Redis, RabbitMQ and MongoDB", () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      "clearbox",
      "mongodb",
      "postgres",
      "rabbitmq",
      "redis",
    ]);
    expect(compose.services.clearbox.build).toBe(".");
  });

  test("the ClearBox service's environment passes the server's own configuration check", () => {
    const env = compose.services.clearbox.environment ?? {};
    const vars = { JWT_SECRET: "j".repeat(40), ADMIN_TOKEN: "a".repeat(20) };
    const resolved = Object.fromEntries(
      Object.entries(env).map(([k, v]) => [k, interpolate(String(v), vars)]),
    );
    const config = loadConfig(resolved);
    expect(config.env).toBe("production");
    expect(config.databaseUrl).toStartWith("postgres://");
    expect(config.redisUrl).toStartWith("redis://");
    expect(config.amqpUrl).toStartWith("amqp://");
    expect(config.mongodbUrl).toStartWith("mongodb://");
  });

  test("refuses to interpolate without the production secrets", () => {
    const env = compose.services.clearbox.environment ?? {};
    expect(() => interpolate(String(env.JWT_SECRET), {})).toThrow("compose requires JWT_SECRET");
    expect(() => interpolate(String(env.ADMIN_TOKEN), {})).toThrow("compose requires ADMIN_TOKEN");
  });

  test("publishes the admin listener on the host's loopback only", () => {
    expect(composeText).toContain('"127.0.0.1:9090:9090"');
    expect(composeText).not.toMatch(/^\s*- "9090:9090"/m);
  });

  const composeCli = Bun.which("docker-compose");
  test.skipIf(!composeCli)("is accepted by `docker-compose config`", () => {
    const run = Bun.spawnSync([composeCli as string, "config", "-q"], {
      cwd: ROOT,
      env: { ...process.env, JWT_SECRET: "j".repeat(40), ADMIN_TOKEN: "a".repeat(20) },
    });
    expect(run.stderr.toString()).toBe("");
    expect(run.exitCode).toBe(0);
  });
});
