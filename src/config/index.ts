import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { type Static, Type as T } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { parseTrustedProxies } from "../ratelimit/client-address.ts";
import { type OidcConfig, type OidcEnv, resolveOidc } from "./oidc.ts";
import { type TlsFiles, tlsFiles, tlsProblems } from "./tls.ts";

export type { OidcConfig, TlsFiles };

/**
 * Who may create accounts (`REGISTRATION`). `open`: anyone, with a password (and, when OIDC_ISSUER
 * is set, by signing in with the identity provider). `invite`: password sign-up needs a
 * registration token issued over the admin RPC. `closed`: no password sign-up. `oidc-only`:
 * passwords are disabled entirely: accounts come only from the identity provider, and password
 * registration, login, change and checks are refused. A new mode is one more literal here and one
 * more case in `RegistrationGate.admit` (src/accounts), which the compiler then insists on.
 */
export const REGISTRATION_MODES = ["open", "invite", "closed", "oidc-only"] as const;
export type RegistrationMode = (typeof REGISTRATION_MODES)[number];

/** What each environment variable must look like; `description` is what the start-up error tells the operator. */
const EnvSchema = T.Object({
  NODE_ENV: T.Union([T.Literal("development"), T.Literal("production"), T.Literal("test")], {
    default: "development",
    description: "one of development, production, test",
  }),
  PORT: T.Integer({ minimum: 0, maximum: 65535, default: 8080, description: "a TCP port, 0-65535" }),
  PUBLIC_HOST: T.String({ minLength: 1, default: "0.0.0.0", description: "an interface address" }),
  ADMIN_PORT: T.Integer({ minimum: 0, maximum: 65535, default: 9090, description: "a TCP port, 0-65535" }),
  ADMIN_HOST: T.String({ minLength: 1, default: "127.0.0.1", description: "an interface address" }),
  ADMIN_TOKEN: T.Optional(
    T.String({ minLength: 16, description: "a bearer token of at least 16 characters" }),
  ),
  TLS_CERT_FILE: T.Optional(T.String({ minLength: 1, description: "a PEM certificate chain file" })),
  TLS_KEY_FILE: T.Optional(T.String({ minLength: 1, description: "a PEM private key file" })),
  ADMIN_TLS_CERT_FILE: T.Optional(T.String({ minLength: 1, description: "a PEM certificate chain file" })),
  ADMIN_TLS_KEY_FILE: T.Optional(T.String({ minLength: 1, description: "a PEM private key file" })),
  DATA_DIR: T.String({ minLength: 1, default: "./data", description: "a directory path" }),
  BACKUP_DIR: T.Optional(T.String({ minLength: 1, description: "a directory path" })),
  ERASURE_LEDGER_FILE: T.Optional(T.String({ minLength: 1, description: "a file path" })),
  DATABASE_URL: T.Optional(
    T.String({ pattern: "^postgres(ql)?://", description: "a postgres:// or postgresql:// URL" }),
  ),
  REDIS_URL: T.Optional(T.String({ pattern: "^rediss?://", description: "a redis:// or rediss:// URL" })),
  REDIS_PREFIX: T.String({
    pattern: "^[A-Za-z0-9_.:-]{0,32}$",
    default: "cb:",
    description: "0-32 of [A-Za-z0-9_.:-], prepended to every Redis key",
  }),
  AMQP_URL: T.Optional(T.String({ pattern: "^amqps?://", description: "an amqp:// or amqps:// URL" })),
  MONGODB_URL: T.Optional(
    T.String({ pattern: "^mongodb(\\+srv)?://", description: "a mongodb:// or mongodb+srv:// URL" }),
  ),
  JWT_SECRET: T.Optional(T.String({ minLength: 32, description: "a secret of at least 32 characters" })),
  NODE_ID: T.Optional(
    T.String({ pattern: "^[A-Za-z0-9_.:-]{1,64}$", description: "1-64 of [A-Za-z0-9_.:-]" }),
  ),
  RETENTION_DAYS: T.Integer({ minimum: 1, maximum: 3650, default: 30, description: "whole days, 1-3650" }),
  BACKUP_RETENTION_DAYS: T.Optional(
    T.Integer({
      minimum: 1,
      maximum: 3650,
      description: "whole days a backup in BACKUP_DIR is kept, 1-3650 (default: RETENTION_DAYS)",
    }),
  ),
  AUDIT_RETENTION_DAYS: T.Integer({
    minimum: 1,
    maximum: 3650,
    default: 365,
    description: "whole days audit entries are kept, 1-3650",
  }),
  RETENTION_INTERVAL_SECONDS: T.Integer({
    minimum: 1,
    maximum: 86400,
    default: 3600,
    description: "seconds between retention runs, 1-86400",
  }),
  CONTROLLER_NAME: T.Optional(
    T.String({ minLength: 1, maxLength: 200, description: "the data controller's name, 1-200 characters" }),
  ),
  DPO_CONTACT: T.Optional(
    T.String({ minLength: 1, maxLength: 200, description: "the DPO's contact, 1-200 characters" }),
  ),
  ACCESS_TOKEN_TTL_SECONDS: T.Integer({
    minimum: 2,
    maximum: 86400,
    default: 900,
    description: "seconds, 2-86400",
  }),
  REFRESH_TOKEN_TTL_DAYS: T.Integer({
    minimum: 1,
    maximum: 365,
    default: 30,
    description: "whole days, 1-365",
  }),
  REFRESH_GRACE_SECONDS: T.Integer({
    minimum: 0,
    maximum: 300,
    default: 10,
    description: "seconds, 0-300 (0: every second presentation of a refresh token revokes the device)",
  }),
  CLUSTER_HEARTBEAT_MS: T.Integer({
    minimum: 50,
    maximum: 60_000,
    default: 1000,
    description: "milliseconds between ring heartbeats, 50-60000 (a node is dropped after 3 missed)",
  }),
  DATABASE_STALL_TIMEOUT_SECONDS: T.Integer({
    minimum: 1,
    maximum: 3600,
    default: 60,
    description:
      "seconds a PostgreSQL connection may stay silent while a query waits before it is dropped unless pg_stat_activity shows its backend active, 1-3600",
  }),
  STARTUP_WAIT_SECONDS: T.Integer({
    minimum: 1,
    maximum: 3600,
    default: 60,
    description: "seconds start-up waits for RabbitMQ to accept a connection, 1-3600",
  }),
  DEVICE_RATE_LIMIT: T.Integer({
    minimum: 1,
    maximum: 1_000_000,
    default: 100,
    description: "WebSocket frames a device may send per second, 1-1000000 (bursts of twice that)",
  }),
  PRESENCE_LEASE_SECONDS: T.Integer({
    minimum: 2,
    maximum: 3600,
    default: 60,
    description: "seconds a connected device stays online without renewal, 2-3600",
  }),
  WS_PING_INTERVAL_MS: T.Integer({
    minimum: 100,
    maximum: 600_000,
    default: 15_000,
    description:
      "milliseconds between WebSocket pings to every socket, 100-600000 (a socket that has not answered the previous ping is closed)",
  }),
  WS_REVALIDATE_INTERVAL_SECONDS: T.Integer({
    minimum: 1,
    maximum: 3600,
    default: 30,
    description:
      "seconds between checks of every open socket's token against the database, 1-3600 (a revoked socket whose close was lost is closed within this)",
  }),
  WS_CONNECTS_PER_DEVICE: T.Integer({
    minimum: 1,
    maximum: 1_000_000,
    default: 60,
    description:
      "WebSocket upgrades one device may make per minute, 1-1000000 (its account ten times that over all its devices)",
  }),
  PRESENCE_WATCHES_PER_NODE: T.Integer({
    minimum: 1000,
    maximum: 100_000_000,
    default: 500_000,
    description: "presence watch entries (socket × watched user) one node holds at most, 1000-100000000",
  }),
  PRESENCE_WATCHES_PER_ACCOUNT: T.Integer({
    minimum: 1000,
    maximum: 100_000_000,
    default: 5000,
    description:
      "presence watch entries one account's sockets hold on one node at most (the sum of its devices' lists), 1000-100000000",
  }),
  // 256 MiB: a heavy day of text is about 10 MB (1,000 sends × 5 recipient devices × 2 KB, a PQXDH
  // prekey message); with no attachment store a photo travels inline (about 150 KB a ciphertext), and
  // 256 MiB still holds about 190 of them to 9 devices. The most one account can make the server
  // hold is about this × (RETENTION_DAYS + 1): docs/SCALING.md, "Storage per account".
  STORED_BYTES_PER_ACCOUNT_PER_DAY: T.Integer({
    minimum: 1024,
    maximum: 1_000_000_000_000,
    default: 256 * 1024 * 1024,
    description:
      "ciphertext bytes one account's sends may make the server store per day (each recipient device's body, of a 1:1 send and of a group send alike), 1024-1000000000000",
  }),
  TRUSTED_PROXIES: T.Optional(
    T.String({
      minLength: 1,
      description:
        "comma-separated addresses or CIDR blocks of the proxies whose X-Forwarded-For is believed, e.g. 10.0.0.0/8,::1",
    }),
  ),
  REGISTRATIONS_PER_ADDRESS: T.Integer({
    minimum: 1,
    maximum: 100_000_000,
    default: 10,
    description: "accounts one client address may create per hour, 1-100000000",
  }),
  LOGIN_ATTEMPTS_PER_ADDRESS: T.Integer({
    minimum: 1,
    maximum: 100_000_000,
    default: 100,
    description: "password checks one client address may make per 15 minutes, 1-100000000",
  }),
  LOGINS_PER_ACCOUNT: T.Integer({
    minimum: 1,
    maximum: 100_000_000,
    default: 30,
    description: "successful password checks of one account per 15 minutes, 1-100000000",
  }),
  LOGIN_FAILURES_PER_ADDRESS: T.Integer({
    minimum: 1,
    maximum: 1_000_000,
    default: 10,
    description: "wrong passwords for one account from one address per 15 minutes, 1-1000000",
  }),
  LOGIN_FAILURES_PER_ACCOUNT: T.Integer({
    minimum: 3,
    maximum: 100_000_000,
    default: 100,
    description:
      "wrong passwords for one account from all addresses per 15 minutes, 3-100000000 (more than twice LOGIN_FAILURES_PER_ADDRESS)",
  }),
  OIDC_DEVICE_SIGN_INS_PER_ADDRESS: T.Integer({
    minimum: 1,
    maximum: 100_000_000,
    default: 30,
    description:
      "device sign-ins (POST /v1/oidc/device) one client address may start per 15 minutes, 1-100000000",
  }),
  PASSWORD_HASH_MEMORY_KIB: T.Integer({
    minimum: 64,
    maximum: 4_194_304,
    default: 65_536,
    description: "argon2id memory cost in KiB, 64-4194304 (production: at least 19456)",
  }),
  PASSWORD_HASH_TIME_COST: T.Integer({
    minimum: 1,
    maximum: 100,
    default: 2,
    description: "argon2id passes, 1-100 (production: at least 2)",
  }),
  REGISTRATION: T.Union(
    REGISTRATION_MODES.map((m) => T.Literal(m)),
    {
      default: "open",
      description:
        "open (anyone), invite (with a token from the admin RPC), closed, or oidc-only (no passwords)",
    },
  ),
  OIDC_ISSUER: T.Optional(T.String({ minLength: 1, description: "the identity provider's issuer URL" })),
  OIDC_CLIENT_ID: T.Optional(
    T.String({ minLength: 1, maxLength: 255, description: "ClearBox's client id at the provider" }),
  ),
  OIDC_CLIENT_SECRET: T.Optional(
    T.String({ minLength: 1, maxLength: 1024, description: "the client secret the provider issued" }),
  ),
  OIDC_PRIVATE_KEY_FILE: T.Optional(
    T.String({ minLength: 1, description: "a PEM private key file for private_key_jwt" }),
  ),
  OIDC_PRIVATE_KEY_ID: T.Optional(
    T.String({ minLength: 1, maxLength: 255, description: "the key id (kid) the provider knows the key by" }),
  ),
  OIDC_SCOPES: T.String({
    minLength: 1,
    default: "openid profile",
    description: "space-separated scopes including openid",
  }),
  OIDC_USERNAME_CLAIM: T.String({
    pattern: "^\\S{1,255}$",
    default: "preferred_username",
    description: "an ID token claim name, e.g. preferred_username",
  }),
  OIDC_REDIRECT_URI: T.Optional(T.String({ minLength: 1, description: "<public URL>/v1/oidc/callback" })),
  OIDC_CLIENT_REDIRECT_URIS: T.Optional(
    T.String({ minLength: 1, description: "comma-separated URIs a browser may return to" }),
  ),
  LOG_FORMAT: T.Union([T.Literal("json"), T.Literal("ecs")], {
    default: "json",
    description: "json (pino) or ecs (Elastic Common Schema)",
  }),
  LOG_LEVEL: T.Union(
    ["fatal", "error", "warn", "info", "debug", "trace", "silent"].map((l) => T.Literal(l)),
    { default: "info", description: "one of fatal, error, warn, info, debug, trace, silent" },
  ),
});

type Env = Static<typeof EnvSchema>;

/** Validated, resolved configuration of one ClearBox node. */
export interface Config {
  env: Env["NODE_ENV"];
  port: number;
  /** Interface the public listener binds (PUBLIC_HOST). */
  publicHost: string;
  /** Set: the public listener serves HTTPS/WSS, TLS 1.3 only. */
  tls?: TlsFiles;
  adminPort: number;
  adminHost: string;
  adminToken?: string;
  /** Set: the admin listener serves HTTPS, TLS 1.3 only. */
  adminTls?: TlsFiles;
  dataDir: string;
  /** Where `POST /admin/v1/backups` writes snapshots of the embedded default (BACKUP_DIR). */
  backupDir: string;
  /**
   * The erasure ledger (ERASURE_LEDGER_FILE): one keyed line per requested erasure, replayed at
   * start-up so a restored backup never brings an erased account back (docs/GDPR.md).
   */
  erasureLedgerFile: string;
  databaseUrl?: string;
  redisUrl?: string;
  redisPrefix: string;
  amqpUrl?: string;
  mongodbUrl?: string;
  jwtSecret: string;
  nodeId: string;
  retentionDays: number;
  /**
   * Whole days a backup directory in `backupDir` is kept (BACKUP_RETENTION_DAYS, default
   * RETENTION_DAYS); the retention job removes older ones (`BackupService.prune`).
   */
  backupRetentionDays: number;
  auditRetentionDays: number;
  retentionIntervalSeconds: number;
  controllerName?: string;
  dpoContact?: string;
  accessTokenTtlSeconds: number;
  refreshTokenTtlDays: number;
  /** A spent refresh token presented again within this many seconds gets the same successor (0: never). */
  refreshGraceSeconds: number;
  logLevel: Env["LOG_LEVEL"];
  logFormat: Env["LOG_FORMAT"];
  clusterHeartbeatMs: number;
  /**
   * How long a PostgreSQL connection may send nothing while a query waits before pg_stat_activity is
   * asked whether its backend is active: if not, or no answer within as long, it is dropped and its
   * queries fail; if so, asked again after as long (DATABASE_STALL_TIMEOUT_SECONDS), in milliseconds.
   */
  databaseStallMs: number;
  /** How long start-up waits for RabbitMQ (STARTUP_WAIT_SECONDS), in milliseconds. */
  startupWaitMs: number;
  deviceRateLimit: number;
  presenceLeaseSeconds: number;
  /** How often every socket is pinged; one unanswered ping closes it (WS_PING_INTERVAL_MS). */
  wsPingIntervalMs: number;
  /**
   * How often every open socket's token generation is compared with the database, ms
   * (WS_REVALIDATE_INTERVAL_SECONDS): the bound on a revoked socket whose close was lost.
   */
  wsRevalidateIntervalMs: number;
  /**
   * WS_CONNECTS_PER_DEVICE: WebSocket upgrades one device may make per minute; its account's devices
   * together ten times that (`connectBudgets`, src/gateway/gateway.ts). Past either, 429.
   */
  wsConnectsPerDevice: number;
  /** Presence watch entries (socket × watched user) one node holds at most. */
  presenceWatchesPerNode: number;
  /** PRESENCE_WATCHES_PER_ACCOUNT: watch entries one account's sockets hold on one node at most. */
  presenceWatchesPerAccount: number;
  /**
   * STORED_BYTES_PER_ACCOUNT_PER_DAY: decoded ciphertext bytes one account's sends may store per
   * day (src/messaging/storage-quota.ts); past it sends are `rejected rate_limited`.
   */
  storedBytesPerAccountPerDay: number;
  /** Accounts one client address may create per hour. */
  registrationsPerAddress: number;
  /** Addresses or CIDR blocks whose `X-Forwarded-For` names the client (TRUSTED_PROXIES); empty: none. */
  trustedProxies: string[];
  /** Budgets of password checks per 15 minutes (src/accounts/password-throttle.ts). */
  loginLimits: {
    attemptsPerAddress: number;
    successesPerAccount: number;
    failuresPerAddress: number;
    failuresPerAccount: number;
  };
  /**
   * Device sign-ins (`POST /v1/oidc/device`) one client address may start per 15 minutes
   * (OIDC_DEVICE_SIGN_INS_PER_ADDRESS); their polls' backstop per address follows it (src/oidc/service.ts).
   */
  oidcDeviceSignInsPerAddress: number;
  /** argon2id cost for new password hashes; a stored hash carries its own, so changing it never locks anyone out. */
  passwordHash: { memoryCost: number; timeCost: number };
  /** Who may create accounts, and whether passwords are accepted at all (REGISTRATION). */
  registration: RegistrationMode;
  /** Set: sign-in with the organisation's OpenID Connect provider (OIDC_* variables). */
  oidc?: OidcConfig;
}

/** A configuration problem an operator must fix; the message names the variable and what it expects. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * A configured service or port could not be used at start-up: the database, Redis or RabbitMQ did
 * not answer, or the port is taken. The message is one line naming the variable and what failed
 * (never the URL, which may hold a password). `src/main.ts` prints it and exits with
 * {@link EXIT_UNAVAILABLE}.
 */
export class StartupError extends Error {
  override name = "StartupError";
  constructor(
    readonly variable: string,
    what: string,
  ) {
    super(`${variable}: ${what}`);
  }
}

/** Exit code of a configuration error (sysexits.h `EX_CONFIG`). */
export const EXIT_CONFIG = 78;
/** Exit code of a service or port unavailable at start-up (sysexits.h `EX_UNAVAILABLE`). */
export const EXIT_UNAVAILABLE = 69;
/** Exit code of an error no code path caught, raised while the node ran (sysexits.h `EX_SOFTWARE`). */
export const EXIT_SOFTWARE = 70;

/** A one-line reason from a driver error, without stack or source excerpt: its code and message. */
export function reasonOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  const message = error.message.split("\n")[0] ?? "";
  return typeof code === "string" && !message.includes(code) ? `${code} ${message}` : message;
}

/** The name of every environment variable the configuration reads (README's configuration table lists each). */
export const ENV_VARIABLES: readonly string[] = Object.keys(EnvSchema.properties);

const INTEGER_VARS = new Set([
  "DATABASE_STALL_TIMEOUT_SECONDS",
  "CLUSTER_HEARTBEAT_MS",
  "STARTUP_WAIT_SECONDS",
  "DEVICE_RATE_LIMIT",
  "PRESENCE_LEASE_SECONDS",
  "WS_PING_INTERVAL_MS",
  "WS_REVALIDATE_INTERVAL_SECONDS",
  "WS_CONNECTS_PER_DEVICE",
  "PRESENCE_WATCHES_PER_NODE",
  "PRESENCE_WATCHES_PER_ACCOUNT",
  "STORED_BYTES_PER_ACCOUNT_PER_DAY",
  "REGISTRATIONS_PER_ADDRESS",
  "LOGIN_ATTEMPTS_PER_ADDRESS",
  "LOGINS_PER_ACCOUNT",
  "LOGIN_FAILURES_PER_ADDRESS",
  "LOGIN_FAILURES_PER_ACCOUNT",
  "OIDC_DEVICE_SIGN_INS_PER_ADDRESS",
  "PORT",
  "ADMIN_PORT",
  "RETENTION_DAYS",
  "BACKUP_RETENTION_DAYS",
  "AUDIT_RETENTION_DAYS",
  "RETENTION_INTERVAL_SECONDS",
  "ACCESS_TOKEN_TTL_SECONDS",
  "REFRESH_TOKEN_TTL_DAYS",
  "REFRESH_GRACE_SECONDS",
  "PASSWORD_HASH_MEMORY_KIB",
  "PASSWORD_HASH_TIME_COST",
]);

const SECRET_VARS = new Set([
  "ADMIN_TOKEN",
  "JWT_SECRET",
  "DATABASE_URL",
  "REDIS_URL",
  "AMQP_URL",
  "MONGODB_URL",
  "OIDC_CLIENT_SECRET",
]);

/** Reads only the variables we know, turns numeric ones into numbers, and drops empty strings as unset. */
function pickEnv(source: Record<string, string | undefined>): Record<string, unknown> {
  const picked: Record<string, unknown> = {};
  for (const key of Object.keys(EnvSchema.properties)) {
    const raw = source[key];
    if (raw === undefined || raw === "") continue;
    picked[key] = INTEGER_VARS.has(key) && /^-?\d+$/.test(raw.trim()) ? Number(raw.trim()) : raw;
  }
  return picked;
}

/** What `loadConfig` does besides reading the environment. */
export interface LoadConfigOptions {
  /**
   * Called with DATA_DIR (absolute, created 0700) once the environment is valid and before anything
   * is written into it: src/main.ts takes the directory's lock here (`lockDataDir`), so a second
   * process on a fresh directory cannot write its own development JWT secret over the first's.
   * What it throws, `loadConfig` throws.
   */
  beforeDataDirWrites?: (dataDir: string) => void;
}

/**
 * Validates the environment once at start-up. Throws ConfigError naming every bad variable.
 * In development and test, a missing JWT secret is generated once and kept in DATA_DIR (after
 * `options.beforeDataDirWrites`).
 */
export function loadConfig(
  source: Record<string, string | undefined> = process.env,
  options: LoadConfigOptions = {},
): Config {
  const candidate = Value.Default(EnvSchema, pickEnv(source));
  const problems = new Map<string, string>();
  for (const e of Value.Errors(EnvSchema, candidate)) {
    const variable = e.path.replace(/^\//, "") || "environment";
    if (problems.has(variable)) continue;
    const schema = EnvSchema.properties[variable as keyof Env] as { description?: string } | undefined;
    const shown = SECRET_VARS.has(variable) ? "a value that does not fit" : JSON.stringify(e.value);
    problems.set(variable, `${variable}: expected ${schema?.description ?? e.message}, got ${shown}`);
  }
  for (const [variable, problem] of tlsProblems(candidate as Record<string, unknown>)) {
    if (!problems.has(variable)) problems.set(variable, problem);
  }
  const partial = candidate as Partial<Env>;
  if (partial.REDIS_URL !== undefined && partial.AMQP_URL === undefined && !problems.has("AMQP_URL")) {
    // A cluster (REDIS_URL) needs the node-to-node transport; without it nodes could not reach each other.
    problems.set(
      "AMQP_URL",
      "AMQP_URL: expected an amqp:// or amqps:// URL when REDIS_URL is set (a cluster's nodes talk over RabbitMQ), got nothing",
    );
  }
  for (const [variable, problem] of abuseProblems(candidate as Partial<Env>)) {
    if (!problems.has(variable)) problems.set(variable, problem);
  }
  const { problems: oidcProblems, oidc } =
    problems.size === 0 ? resolveOidc(candidate as OidcEnv) : { problems: [], oidc: undefined };
  for (const [variable, problem] of oidcProblems) {
    if (!problems.has(variable)) problems.set(variable, problem);
  }
  if (problems.size > 0) {
    throw new ConfigError(`invalid configuration:\n  ${[...problems.values()].join("\n  ")}`);
  }
  const env = candidate as Env;
  const dataDir = resolve(env.DATA_DIR);
  if (env.NODE_ENV === "production") {
    const missing = [
      !env.JWT_SECRET && "JWT_SECRET (a secret of at least 32 characters)",
      !env.ADMIN_TOKEN && "ADMIN_TOKEN (a bearer token of at least 16 characters)",
      // OWASP's floor for argon2id (m=19 MiB, t=2); lower costs are for tests and load tests.
      env.PASSWORD_HASH_MEMORY_KIB < 19_456 && "PASSWORD_HASH_MEMORY_KIB of at least 19456",
      env.PASSWORD_HASH_TIME_COST < 2 && "PASSWORD_HASH_TIME_COST of at least 2",
    ].filter(Boolean);
    if (missing.length > 0) {
      throw new ConfigError(`NODE_ENV=production requires ${missing.join(" and ")}`);
    }
  }
  if (options.beforeDataDirWrites) {
    asConfigError("DATA_DIR", () => makePrivateDir(dataDir));
    options.beforeDataDirWrites(dataDir);
  }
  return {
    env: env.NODE_ENV,
    port: env.PORT,
    publicHost: env.PUBLIC_HOST,
    tls: tlsFiles(env.TLS_CERT_FILE, env.TLS_KEY_FILE),
    adminPort: env.ADMIN_PORT,
    adminHost: env.ADMIN_HOST,
    adminToken: env.ADMIN_TOKEN,
    adminTls: tlsFiles(env.ADMIN_TLS_CERT_FILE, env.ADMIN_TLS_KEY_FILE),
    dataDir,
    backupDir: resolve(env.BACKUP_DIR ?? join(dataDir, "backups")),
    erasureLedgerFile: resolve(env.ERASURE_LEDGER_FILE ?? join(dataDir, "erasure-ledger")),
    databaseUrl: env.DATABASE_URL,
    redisUrl: env.REDIS_URL,
    redisPrefix: env.REDIS_PREFIX,
    amqpUrl: env.AMQP_URL,
    mongodbUrl: env.MONGODB_URL,
    jwtSecret: env.JWT_SECRET ?? developmentSecret(dataDir),
    nodeId: env.NODE_ID ?? `${hostname()}-${env.PORT}`,
    retentionDays: env.RETENTION_DAYS,
    backupRetentionDays: env.BACKUP_RETENTION_DAYS ?? env.RETENTION_DAYS,
    auditRetentionDays: env.AUDIT_RETENTION_DAYS,
    retentionIntervalSeconds: env.RETENTION_INTERVAL_SECONDS,
    controllerName: env.CONTROLLER_NAME,
    dpoContact: env.DPO_CONTACT,
    accessTokenTtlSeconds: env.ACCESS_TOKEN_TTL_SECONDS,
    refreshTokenTtlDays: env.REFRESH_TOKEN_TTL_DAYS,
    refreshGraceSeconds: env.REFRESH_GRACE_SECONDS,
    logLevel: env.LOG_LEVEL,
    logFormat: env.LOG_FORMAT,
    clusterHeartbeatMs: env.CLUSTER_HEARTBEAT_MS,
    databaseStallMs: env.DATABASE_STALL_TIMEOUT_SECONDS * 1000,
    startupWaitMs: env.STARTUP_WAIT_SECONDS * 1000,
    deviceRateLimit: env.DEVICE_RATE_LIMIT,
    presenceLeaseSeconds: env.PRESENCE_LEASE_SECONDS,
    wsPingIntervalMs: env.WS_PING_INTERVAL_MS,
    wsRevalidateIntervalMs: env.WS_REVALIDATE_INTERVAL_SECONDS * 1000,
    wsConnectsPerDevice: env.WS_CONNECTS_PER_DEVICE,
    presenceWatchesPerNode: env.PRESENCE_WATCHES_PER_NODE,
    presenceWatchesPerAccount: env.PRESENCE_WATCHES_PER_ACCOUNT,
    storedBytesPerAccountPerDay: env.STORED_BYTES_PER_ACCOUNT_PER_DAY,
    registrationsPerAddress: env.REGISTRATIONS_PER_ADDRESS,
    trustedProxies: env.TRUSTED_PROXIES
      ? (parseTrustedProxies(env.TRUSTED_PROXIES) as { blocks: string[] }).blocks
      : [],
    loginLimits: {
      attemptsPerAddress: env.LOGIN_ATTEMPTS_PER_ADDRESS,
      successesPerAccount: env.LOGINS_PER_ACCOUNT,
      failuresPerAddress: env.LOGIN_FAILURES_PER_ADDRESS,
      failuresPerAccount: env.LOGIN_FAILURES_PER_ACCOUNT,
    },
    oidcDeviceSignInsPerAddress: env.OIDC_DEVICE_SIGN_INS_PER_ADDRESS,
    passwordHash: { memoryCost: env.PASSWORD_HASH_MEMORY_KIB, timeCost: env.PASSWORD_HASH_TIME_COST },
    registration: env.REGISTRATION,
    oidc,
  };
}

/** Problems the schema cannot see: proxy addresses that do not parse, login budgets one address could exhaust. */
function abuseProblems(env: Partial<Env>): [string, string][] {
  const problems: [string, string][] = [];
  if (env.TRUSTED_PROXIES !== undefined) {
    const parsed = parseTrustedProxies(env.TRUSTED_PROXIES);
    if (!parsed.ok) {
      problems.push([
        "TRUSTED_PROXIES",
        `TRUSTED_PROXIES: expected addresses or CIDR blocks separated by commas, got ${JSON.stringify(parsed.bad.join(","))}`,
      ]);
    }
  }
  const { LOGIN_FAILURES_PER_ACCOUNT: perAccount, LOGIN_FAILURES_PER_ADDRESS: perAddress } = env;
  // Windows of the two budgets need not line up, so one address may land up to twice its budget in one account window.
  if (typeof perAccount === "number" && typeof perAddress === "number" && perAccount <= 2 * perAddress) {
    problems.push([
      "LOGIN_FAILURES_PER_ACCOUNT",
      `LOGIN_FAILURES_PER_ACCOUNT: expected more than twice LOGIN_FAILURES_PER_ADDRESS (${perAddress}), so one address cannot lock an account out, got ${perAccount}`,
    ]);
  }
  return problems;
}

/**
 * Makes `dir` (DATA_DIR: PGlite's files with the password hashes and the receipt signing key, the
 * envelope log, the erasure ledger, the signing secret) reachable by its owner only: created
 * 0700, and an existing one with group or other permission bits set to 0700. The directory's mode
 * guards every file under it, whatever the umask gave those files.
 */
export function makePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if ((statSync(dir).mode & 0o077) !== 0) chmodSync(dir, 0o700);
}

/**
 * Checks, before anything opens, that the node can write where its configuration points: DATA_DIR
 * is made private ({@link makePrivateDir}) and the erasure ledger (ERASURE_LEDGER_FILE) is opened
 * for appending, its directory and an empty file (0600) created when missing, as
 * `ErasureLedger.record` will. Throws a {@link ConfigError} whose one line names the variable, the
 * path and the system's reason (e.g. `EACCES: permission denied, mkdir '/srv/clearbox'`), which
 * `src/main.ts` prints before exiting 78: without it a DATA_DIR the node cannot create ended in a
 * stack trace, and a ledger it cannot write let the node start and fail the first erasure request.
 */
export function checkWritablePaths(config: Pick<Config, "dataDir" | "erasureLedgerFile">): void {
  asConfigError("DATA_DIR", () => makePrivateDir(config.dataDir));
  asConfigError("ERASURE_LEDGER_FILE", () => {
    mkdirSync(dirname(config.erasureLedgerFile), { recursive: true });
    closeSync(openSync(config.erasureLedgerFile, "a", 0o600));
  });
}

/** Runs a file-system step, turning its failure into a one-line {@link ConfigError} naming `variable`. */
function asConfigError(variable: string, step: () => void): void {
  try {
    step();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === undefined) throw error;
    throw new ConfigError(`${variable}: cannot write there: ${(error as Error).message}`);
  }
}

/** The embedded default's signing secret: generated on first start, then read back so tokens survive restarts. */
function developmentSecret(dataDir: string): string {
  const file = join(dataDir, "jwt-secret");
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  const secret = randomBytes(48).toString("base64url");
  asConfigError("DATA_DIR", () => {
    makePrivateDir(dataDir);
    writeFileSync(file, secret, { mode: 0o600 });
  });
  return secret;
}
