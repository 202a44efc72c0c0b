import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../../src/config/index.ts";

function tempDir() {
  return mkdtempSync(join(tmpdir(), "clearbox-config-"));
}

describe("configuration", () => {
  test("defaults follow docs/PROTOCOL.md when nothing is set", () => {
    const dir = tempDir();
    const config = loadConfig({ DATA_DIR: dir });
    expect(config).toMatchObject({
      env: "development",
      port: 8080,
      adminPort: 9090,
      adminHost: "127.0.0.1",
      retentionDays: 30,
      accessTokenTtlSeconds: 900,
      redisPrefix: "cb:",
    });
    expect(config.databaseUrl).toBeUndefined();
    expect(config.adminToken).toBeUndefined();
    rmSync(dir, { recursive: true });
  });

  test("REDIS_URL without AMQP_URL is a configuration error naming AMQP_URL, not a crash at start-up", () => {
    const dir = tempDir();
    expect(() => loadConfig({ DATA_DIR: dir, REDIS_URL: "redis://127.0.0.1:6379" })).toThrow(ConfigError);
    expect(() => loadConfig({ DATA_DIR: dir, REDIS_URL: "redis://127.0.0.1:6379" })).toThrow(
      /AMQP_URL: expected an amqp:\/\/ or amqps:\/\/ URL when REDIS_URL is set/,
    );
    // Both set, or neither: fine. AMQP_URL alone (offline queues in RabbitMQ, one node) stays allowed.
    expect(
      loadConfig({ DATA_DIR: dir, REDIS_URL: "redis://127.0.0.1:6379", AMQP_URL: "amqp://127.0.0.1" })
        .amqpUrl,
    ).toBe("amqp://127.0.0.1");
    expect(loadConfig({ DATA_DIR: dir, AMQP_URL: "amqp://127.0.0.1" }).redisUrl).toBeUndefined();
    expect(loadConfig({ DATA_DIR: dir }).startupWaitMs).toBe(60_000);
    expect(loadConfig({ DATA_DIR: dir, STARTUP_WAIT_SECONDS: "5" }).startupWaitMs).toBe(5_000);
    rmSync(dir, { recursive: true });
  });

  test("the development JWT secret is generated once into DATA_DIR and reused", () => {
    const dir = tempDir();
    const first = loadConfig({ DATA_DIR: dir });
    expect(first.jwtSecret.length).toBeGreaterThanOrEqual(32);
    expect(readFileSync(join(dir, "jwt-secret"), "utf8")).toBe(first.jwtSecret);
    expect(loadConfig({ DATA_DIR: dir }).jwtSecret).toBe(first.jwtSecret);
    rmSync(dir, { recursive: true });
  });

  test("production refuses to start without JWT_SECRET and ADMIN_TOKEN and generates no secret", () => {
    const dir = tempDir();
    expect(() => loadConfig({ NODE_ENV: "production", DATA_DIR: dir })).toThrow(
      /NODE_ENV=production requires JWT_SECRET .* and ADMIN_TOKEN/,
    );
    expect(existsSync(join(dir, "jwt-secret"))).toBe(false);
    rmSync(dir, { recursive: true });
  });

  test("production starts with both secrets set", () => {
    const config = loadConfig({
      NODE_ENV: "production",
      JWT_SECRET: "s".repeat(40),
      ADMIN_TOKEN: "a".repeat(20),
      DATA_DIR: "/nonexistent/never-written",
    });
    expect(config.jwtSecret).toBe("s".repeat(40));
    expect(config.passwordHash).toEqual({ memoryCost: 65_536, timeCost: 2 });
  });

  test("production refuses an argon2id cost below OWASP's floor; development takes it", () => {
    const env = {
      JWT_SECRET: "s".repeat(40),
      ADMIN_TOKEN: "a".repeat(20),
      DATA_DIR: "/nonexistent/never-written",
      PASSWORD_HASH_MEMORY_KIB: "1024",
      PASSWORD_HASH_TIME_COST: "1",
    };
    expect(() => loadConfig({ ...env, NODE_ENV: "production" })).toThrow(
      /requires PASSWORD_HASH_MEMORY_KIB of at least 19456 and PASSWORD_HASH_TIME_COST of at least 2/,
    );
    expect(loadConfig({ ...env, NODE_ENV: "development" }).passwordHash).toEqual({
      memoryCost: 1024,
      timeCost: 1,
    });
  });

  test.each([
    ["PORT", "http", "PORT: expected a TCP port"],
    ["PORT", "70000", "PORT: expected a TCP port"],
    ["DATABASE_URL", "mysql://localhost/db", "DATABASE_URL: expected a postgres:// or postgresql:// URL"],
    ["REDIS_URL", "localhost:6379", "REDIS_URL: expected a redis:// or rediss:// URL"],
    ["AMQP_URL", "http://x", "AMQP_URL: expected an amqp:// or amqps:// URL"],
    ["MONGODB_URL", "postgres://x", "MONGODB_URL: expected a mongodb:// or mongodb+srv:// URL"],
    ["RETENTION_DAYS", "0", "RETENTION_DAYS: expected whole days, 1-3650"],
    ["RETENTION_DAYS", "2.5", "RETENTION_DAYS: expected whole days"],
    ["JWT_SECRET", "short", "JWT_SECRET: expected a secret of at least 32 characters"],
    ["ADMIN_TOKEN", "short", "ADMIN_TOKEN: expected a bearer token of at least 16 characters"],
    ["NODE_ENV", "staging", "NODE_ENV: expected one of development, production, test"],
    ["LOG_LEVEL", "loud", "LOG_LEVEL: expected one of fatal"],
    ["NODE_ID", "has space", "NODE_ID: expected 1-64 of"],
    ["PASSWORD_HASH_MEMORY_KIB", "8", "PASSWORD_HASH_MEMORY_KIB: expected argon2id memory cost in KiB"],
    ["PASSWORD_HASH_TIME_COST", "0", "PASSWORD_HASH_TIME_COST: expected argon2id passes, 1-100"],
    ["REGISTRATION", "oidc", "REGISTRATION: expected open (anyone), invite"],
    ["REGISTRATIONS_PER_ADDRESS", "0", "REGISTRATIONS_PER_ADDRESS: expected accounts one client address"],
    ["PRESENCE_WATCHES_PER_NODE", "10", "PRESENCE_WATCHES_PER_NODE: expected presence watch entries"],
    [
      "PRESENCE_WATCHES_PER_ACCOUNT",
      "10",
      "PRESENCE_WATCHES_PER_ACCOUNT: expected presence watch entries one account",
    ],
    [
      "PRESENCE_WATCHES_PER_ACCOUNT",
      "many",
      "PRESENCE_WATCHES_PER_ACCOUNT: expected presence watch entries one account",
    ],
    ["STARTUP_WAIT_SECONDS", "0", "STARTUP_WAIT_SECONDS: expected seconds start-up waits for RabbitMQ"],
    ["STARTUP_WAIT_SECONDS", "soon", "STARTUP_WAIT_SECONDS: expected seconds start-up waits for RabbitMQ"],
    ["TRUSTED_PROXIES", "10.0.0.0/33", "TRUSTED_PROXIES: expected addresses or CIDR blocks"],
    ["TRUSTED_PROXIES", "proxy.local", "TRUSTED_PROXIES: expected addresses or CIDR blocks"],
    [
      "LOGIN_ATTEMPTS_PER_ADDRESS",
      "0",
      "LOGIN_ATTEMPTS_PER_ADDRESS: expected password checks one client address",
    ],
    ["LOGINS_PER_ACCOUNT", "x", "LOGINS_PER_ACCOUNT: expected successful password checks"],
    [
      "OIDC_DEVICE_SIGN_INS_PER_ADDRESS",
      "0",
      "OIDC_DEVICE_SIGN_INS_PER_ADDRESS: expected device sign-ins (POST /v1/oidc/device) one client address",
    ],
    [
      "OIDC_DEVICE_SIGN_INS_PER_ADDRESS",
      "1.5",
      "OIDC_DEVICE_SIGN_INS_PER_ADDRESS: expected device sign-ins (POST /v1/oidc/device) one client address",
    ],
    ["LOGIN_FAILURES_PER_ADDRESS", "0", "LOGIN_FAILURES_PER_ADDRESS: expected wrong passwords"],
    // One address may land twice its budget in one account window: 20 is not more than twice 10.
    [
      "LOGIN_FAILURES_PER_ACCOUNT",
      "20",
      "LOGIN_FAILURES_PER_ACCOUNT: expected more than twice LOGIN_FAILURES_PER_ADDRESS",
    ],
  ])("%s=%s is refused with a message naming the variable", (name, value, message) => {
    expect(() =>
      loadConfig({ DATA_DIR: "/tmp/clearbox-config-unused", JWT_SECRET: "x".repeat(32), [name]: value }),
    ).toThrow(message);
  });

  test("abuse limits: defaults, trusted proxies parsed, IPv4 and IPv6 blocks", () => {
    const defaults = loadConfig({ DATA_DIR: "/tmp/x", JWT_SECRET: "x".repeat(32) });
    expect(defaults.trustedProxies).toEqual([]);
    expect(defaults.presenceWatchesPerNode).toBe(500_000);
    expect(defaults.loginLimits).toEqual({
      attemptsPerAddress: 100,
      successesPerAccount: 30,
      failuresPerAddress: 10,
      failuresPerAccount: 100,
    });
    expect(defaults.oidcDeviceSignInsPerAddress).toBe(30);
    expect(
      loadConfig({ DATA_DIR: "/tmp/x", JWT_SECRET: "x".repeat(32), OIDC_DEVICE_SIGN_INS_PER_ADDRESS: "500" })
        .oidcDeviceSignInsPerAddress,
    ).toBe(500);
    const set = loadConfig({
      DATA_DIR: "/tmp/x",
      JWT_SECRET: "x".repeat(32),
      TRUSTED_PROXIES: " 10.0.0.0/8, 127.0.0.1 ,fd00::/8,::1",
    });
    expect(set.trustedProxies).toEqual(["10.0.0.0/8", "127.0.0.1", "fd00::/8", "::1"]);
  });

  test("secrets in a refused value are not echoed back", () => {
    try {
      loadConfig({ JWT_SECRET: "my-secret", DATA_DIR: "/tmp/x" });
      throw new Error("should have thrown");
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      expect(String(error)).not.toContain("my-secret");
    }
  });

  test("WS_REVALIDATE_INTERVAL_SECONDS: 30 s by default, whole seconds 1-3600, anything else refused naming it", () => {
    const base = { DATA_DIR: "/tmp/x", JWT_SECRET: "x".repeat(32) };
    expect(loadConfig(base).wsRevalidateIntervalMs).toBe(30_000);
    expect(loadConfig({ ...base, WS_REVALIDATE_INTERVAL_SECONDS: "45" }).wsRevalidateIntervalMs).toBe(45_000);
    for (const bad of ["0", "3601", "1.5", "abc", "-1"]) {
      expect(() => loadConfig({ ...base, WS_REVALIDATE_INTERVAL_SECONDS: bad })).toThrow(
        /WS_REVALIDATE_INTERVAL_SECONDS: expected seconds .*1-3600/,
      );
    }
  });

  test("every bad variable is reported at once", () => {
    expect(() =>
      loadConfig({ PORT: "x", ADMIN_PORT: "y", DATA_DIR: "/tmp/x", JWT_SECRET: "x".repeat(32) }),
    ).toThrow(/PORT: .*\n.*ADMIN_PORT: /s);
  });
});
