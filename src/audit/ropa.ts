import type { Config } from "../config/index.ts";

/** The configuration the record of processing is generated from. */
export type RopaConfig = Pick<
  Config,
  | "databaseUrl"
  | "redisUrl"
  | "amqpUrl"
  | "mongodbUrl"
  | "adminHost"
  | "tls"
  | "retentionDays"
  | "backupRetentionDays"
  | "auditRetentionDays"
  | "refreshTokenTtlDays"
  | "accessTokenTtlSeconds"
  | "presenceLeaseSeconds"
  | "retentionIntervalSeconds"
  | "controllerName"
  | "dpoContact"
  | "oidc"
  | "registration"
  | "registrationsPerAddress"
  | "erasureLedgerFile"
>;

/** One category of personal data: what it is, why, where it lives and how long. */
export interface RopaCategory {
  category: string;
  data: string[];
  purpose: string;
  legalBasis: string;
  stores: string[];
  retention: { days: number | null; rule: string };
  /** Where the data comes from when not from the data subject (Art. 14(2)(f)). */
  source?: string;
}

/** A GDPR Art. 30(1) record of processing activities, as JSON. */
export interface Ropa {
  record: string;
  generatedAt: string;
  controller: { name: string; dpoContact: string };
  /** How people become data subjects here: the `REGISTRATION` mode and what it means. */
  registration: { mode: Config["registration"]; rule: string };
  purposes: string[];
  dataSubjects: string[];
  categories: RopaCategory[];
  recipients: string[];
  processors: { kind: string; role: string }[];
  internationalTransfers: string;
  securityMeasures: string[];
}

const UNSET = (variable: string) => `not configured (set ${variable})`;

/** What each registration mode means for who becomes a data subject. */
const REGISTRATION_RULES: Record<Config["registration"], (perAddress: number) => string> = {
  open: (n) => `anyone may create an account (at most ${n} per client address per hour)`,
  invite: (n) =>
    `only holders of a registration token issued over the admin RPC may create an account (at most ${n} per client address per hour)`,
  closed: () => "no account is created with a password",
  "oidc-only": () =>
    "accounts are created only by a first sign-in with the organisation's identity provider; password registration is disabled",
};

/** Who the data subjects are, by registration mode. */
const DATA_SUBJECTS: Record<Config["registration"], string> = {
  open: "registered users of this server (anyone may sign up)",
  invite: "registered users of this server (people the operator invited with a registration token)",
  closed: "registered users of this server (registration is closed: existing accounts only)",
  "oidc-only":
    "members of the organisation's identity provider who signed in to this server (password registration disabled)",
};
const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Generates the record from the running configuration: its stores, periods and admin binding. */
export function buildRopa(config: RopaConfig, now: Date = new Date()): Ropa {
  const database = config.databaseUrl ? "PostgreSQL" : "PGlite (embedded PostgreSQL)";
  const history = config.mongodbUrl ? "MongoDB" : database;
  const queues = config.amqpUrl ? "RabbitMQ" : `${database} (embedded queue)`;
  const presence = config.redisUrl ? "Redis" : "node memory";
  const days = config.retentionDays;
  const processors = [
    {
      kind: database,
      role: "accounts, devices, public keys, groups, refresh tokens, audit log, erasure jobs",
    },
  ];
  if (config.mongodbUrl) processors.push({ kind: "MongoDB", role: "envelope history" });
  else processors[0].role += ", envelope history";
  if (config.amqpUrl) processors.push({ kind: "RabbitMQ", role: "offline envelope queues" });
  if (config.redisUrl)
    processors.push({ kind: "Redis", role: "presence, cluster ring, rate-limit counters" });
  const contract = "Art. 6(1)(b): performance of the messaging service the user signed up for";
  const categories: RopaCategory[] = [
    {
      category: "accounts",
      data: ["user id", "username", "argon2id password hash", "creation time"],
      purpose: "authenticate users",
      legalBasis: contract,
      stores: [database],
      retention: { days: null, rule: "until the account is erased (DELETE /v1/me or admin erasure)" },
    },
    {
      category: "devices",
      data: [
        "device id",
        "registration id",
        "device name",
        "creation and last-seen time",
        "refresh-token hashes",
      ],
      purpose: "route messages to each device and keep it signed in",
      legalBasis: contract,
      stores: [database],
      retention: {
        days: config.refreshTokenTtlDays,
        rule: `devices until removed or the account is erased; refresh tokens expire after ${config.refreshTokenTtlDays} days and are deleted by the retention job, access tokens live ${config.accessTokenTtlSeconds} s and are not stored`,
      },
    },
    {
      category: "public keys",
      data: [
        "identity key",
        "signed prekey",
        "Kyber last-resort key",
        "one-time EC and Kyber prekeys",
        "ids and SHA-256 digests of one-time prekeys handed out",
      ],
      purpose: "let other users start end-to-end-encrypted sessions",
      legalBasis: contract,
      stores: [database],
      retention: {
        days: null,
        rule: "replaced on upload; one-time keys deleted when handed out (their id and digest kept for 30 days so an upload cannot store them again); all removed with the device or account",
      },
    },
    {
      category: "groups",
      data: ["group id", "group name", "member user ids and roles"],
      purpose: "fan group messages out to members",
      legalBasis: contract,
      stores: [database],
      retention: { days: null, rule: "membership until the member leaves, is removed or is erased" },
    },
    {
      category: "group invitations",
      data: ["group id", "invitee user id", "inviting user id", "time of the invitation"],
      purpose: "ask a user's consent before they join a group",
      legalBasis: contract,
      stores: [database],
      retention: {
        days: null,
        rule: "until the invitee accepts or declines, an admin withdraws it, the group is deleted, or either user is erased",
      },
    },
    {
      category: "blocks",
      data: ["blocking user id", "blocked user id", "time of the block"],
      purpose: "keep a blocked user's messages, invitations and presence watches away from the blocker",
      legalBasis: contract,
      stores: [database],
      retention: { days: null, rule: "until the blocker lifts it or either user is erased" },
    },
    {
      category: "envelope metadata and ciphertext",
      data: ["sender and recipient user and device ids", "group id", "timestamp", "end-to-end ciphertext"],
      purpose: "deliver messages, including to offline devices",
      legalBasis: contract,
      stores: [...new Set([history, queues])],
      retention: {
        days,
        rule: `ciphertext dropped when the recipient device acknowledges it; metadata and undelivered envelopes removed after ${days} days (history purge${config.mongodbUrl ? " and MongoDB TTL index" : ""}${config.amqpUrl ? ", RabbitMQ x-message-ttl and x-expires" : ""})`,
      },
    },
    {
      category: "presence",
      data: ["which devices are connected, and to which node", "last-seen time"],
      purpose:
        "show users who share a group with the user (both accepted, neither blocks the other) whether the user is online, and route to live sockets",
      legalBasis: contract,
      stores: [presence],
      retention: {
        days: null,
        rule: `connection leases expire ${config.presenceLeaseSeconds * 2} s after the last renewal; last-seen kept until the account is erased`,
      },
    },
    {
      category: "abuse prevention",
      data: [
        "client IP address (IPv6: its /64) as a rate-limit key",
        "the username a login or erasure names",
        "counts of password checks and of account creations",
        "counts of an account's key fetches, user lookups and own exports, and the ciphertext bytes its sends stored today (by its user id)",
      ],
      purpose:
        "keep password guessing, credential stuffing and mass sign-ups from harming users and the service",
      legalBasis: "Art. 6(1)(f) with Recital 49: network and information security",
      stores: [config.redisUrl ? "Redis" : "node memory"],
      retention: {
        days: null,
        rule: "each counter expires with its window (15 minutes for password checks, an hour for account creations and exports, 10 minutes for key fetches, a minute for user lookups, a day for stored bytes); the username's and the user id's counters go at once when the account is erased",
      },
    },
    {
      category: "audit",
      data: [
        "pseudonymised user (HMAC under a per-user key, destroyed on erasure)",
        "action",
        "time",
        "non-personal details (device ids, counts, group ids, admin routes and statuses)",
      ],
      purpose:
        "security and accountability of logins, key changes, group changes, exports, erasures and admin calls",
      legalBasis: "Art. 6(1)(c) and (f) with Art. 5(2) and 32: accountability and security of processing",
      stores: [database],
      retention: {
        days: config.auditRetentionDays,
        rule: `entries older than ${config.auditRetentionDays} days are removed from the head of the hash chain; entries about an erased user become anonymous at once`,
      },
    },
    {
      category: "erasure ledger",
      data: [
        "SHA-256 of each erased account's id (a random UUID: not reversible, and linked to nobody once the account is gone)",
        "time of the erasure request",
      ],
      purpose:
        "keep erased accounts erased when a backup is restored: each node erases again, at start-up, every account the ledger lists",
      legalBasis: "Art. 6(1)(c) with Art. 17 and Art. 5(2): erasure, and being able to show it lasts",
      stores: [`file ${config.erasureLedgerFile} (kept outside the backups)`],
      retention: {
        days: null,
        rule: `as long as a backup older than the erasure may be restored (backups kept at most ${config.backupRetentionDays} days in BACKUP_DIR); the operator removes older lines, ClearBox does not prune the file`,
      },
    },
  ];
  if (config.oidc) {
    categories.push({
      category: "identity provider links",
      data: [
        "issuer and subject identifier (iss, sub) of the user at the identity provider",
        "link and last sign-in time",
        `username taken from the ${config.oidc.usernameClaim} claim at the first sign-in`,
        "one-time sign-in codes (hashed, 60 s)",
      ],
      purpose:
        "sign users in with the organisation's identity provider, and sign them out when it ends their access",
      legalBasis: contract,
      stores: [database],
      retention: {
        days: null,
        rule: "the link until the account is erased; sign-in codes until spent or expired (60 s); back-channel logout token ids (no personal data) for 5 minutes",
      },
      source: `the identity provider ${config.oidc.issuer} (OpenID Connect ID tokens and back-channel logout tokens)`,
    });
  }
  const admin = LOOPBACK.test(config.adminHost)
    ? `admin RPC on a separate listener bound to loopback (${config.adminHost}), bearer token compared in constant time`
    : `admin RPC on a separate listener bound to ${config.adminHost} (not loopback), bearer token compared in constant time`;
  const registration = {
    mode: config.registration,
    rule:
      REGISTRATION_RULES[config.registration](config.registrationsPerAddress) +
      // The identity provider provisions accounts at a first sign-in whatever the password mode.
      (config.oidc && config.registration !== "oidc-only"
        ? `; a first sign-in with the identity provider ${config.oidc.issuer} also creates an account`
        : ""),
  };
  return {
    record: "GDPR Art. 30(1) record of processing activities",
    generatedAt: now.toISOString(),
    controller: {
      name: config.controllerName ?? UNSET("CONTROLLER_NAME"),
      dpoContact: config.dpoContact ?? UNSET("DPO_CONTACT"),
    },
    registration,
    purposes: [
      "provide end-to-end-encrypted 1:1 and group messaging",
      "authenticate users and their devices",
      "distribute public keys for end-to-end encryption",
      "show presence to users who share a group",
      "keep a pseudonymised audit trail for security and accountability",
      "answer data-subject requests (export, erasure)",
    ],
    dataSubjects: [DATA_SUBJECTS[config.registration]],
    categories,
    recipients: [],
    processors,
    internationalTransfers: "none by the server; processors are wherever the operator runs them",
    securityMeasures: [
      "end-to-end encryption (Signal protocol): the server stores and routes ciphertext only",
      config.registration === "oidc-only"
        ? "no passwords: users sign in with the organisation's identity provider (OpenID Connect, PKCE, signed ID tokens)"
        : "passwords hashed with argon2id",
      config.tls
        ? "TLS 1.3 only on the public listener (native)"
        : "TLS 1.3 terminated by the reverse proxy in front of the public listener, which speaks plain HTTP (deploy/nginx)",
      "audit subjects pseudonymised, keys kept apart from the log and destroyed on erasure",
      "audit log hash-chained (SHA-256), UPDATE/DELETE/TRUNCATE refused by the database",
      admin,
      `retention job every ${config.retentionIntervalSeconds} s on every node`,
      "logs carry no passwords, tokens or message bodies",
    ],
  };
}
