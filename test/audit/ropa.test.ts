import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { buildRopa } from "../../src/audit/ropa.ts";
import { loadConfig } from "../../src/config/index.ts";
import { type Api, api } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

const CATEGORIES = [
  "accounts",
  "devices",
  "public keys",
  "groups",
  "group invitations",
  "blocks",
  "envelope metadata and ciphertext",
  "presence",
  "abuse prevention",
  "audit",
  "erasure ledger",
];

describe.each(BACKENDS)("GET /admin/v1/ropa on %s", (backend) => {
  let node: TestNode;
  let admin: Api;

  beforeAll(async () => {
    node = await startTestNode(backend, {
      env: {
        RETENTION_DAYS: "14",
        AUDIT_RETENTION_DAYS: "200",
        REFRESH_TOKEN_TTL_DAYS: "9",
        CONTROLLER_NAME: "Acme School",
        DPO_CONTACT: "dpo@acme.example",
      },
    });
    admin = api(node.adminUrl);
  });
  afterAll(() => node?.teardown());

  test("reflects the running configuration: controller, retention per category, backing services", async () => {
    const res = await admin.get("/admin/v1/ropa", ADMIN_TOKEN);
    expect(res.status).toBe(200);
    const ropa = res.body;
    expect(ropa.controller).toEqual({ name: "Acme School", dpoContact: "dpo@acme.example" });
    expect(ropa.categories.map((c: { category: string }) => c.category)).toEqual(CATEGORIES);
    const byName = Object.fromEntries(ropa.categories.map((c: { category: string }) => [c.category, c]));
    expect(byName["envelope metadata and ciphertext"].retention.days).toBe(14);
    expect(byName.audit.retention.days).toBe(200);
    expect(byName.devices.retention.days).toBe(9);
    expect(byName.accounts.retention.days).toBeNull();
    // The ledger names its file (outside the backups) and the backup horizon it must outlive.
    expect(byName["erasure ledger"].stores).toEqual([
      `file ${node.dataDir}/erasure-ledger (kept outside the backups)`,
    ]);
    expect(byName["erasure ledger"].retention.rule).toContain("at most 14 days");
    const database = backend === "postgres" ? "PostgreSQL" : "PGlite (embedded PostgreSQL)";
    expect(ropa.processors.map((p: { kind: string }) => p.kind)).toEqual([database]);
    expect(byName.accounts.stores).toEqual([database]);
    expect(byName.presence.stores).toEqual(["node memory"]);
    expect(ropa.recipients).toEqual([]);
    expect(ropa.internationalTransfers).toMatch(/^none by the server/);
    const measures = ropa.securityMeasures.join("\n");
    for (const words of [
      "ciphertext only",
      "argon2id",
      "TLS",
      "pseudonymised",
      "hash-chained",
      "loopback (127.0.0.1)",
    ]) {
      expect(measures).toContain(words);
    }
  });
});

describe("record of processing built from a clustered configuration", () => {
  test("names every configured backing service, the defaults, and a non-loopback admin listener", () => {
    const config = loadConfig({
      NODE_ENV: "test",
      DATA_DIR: "/tmp/clearbox-ropa-unused",
      JWT_SECRET: "test-jwt-secret-that-is-long-enough-0123456789",
      DATABASE_URL: "postgres://db.internal/clearbox",
      REDIS_URL: "redis://redis.internal:6379",
      AMQP_URL: "amqp://mq.internal",
      MONGODB_URL: "mongodb://mongo.internal/clearbox",
      ADMIN_HOST: "0.0.0.0",
    });
    const ropa = buildRopa(config, new Date("2026-01-02T03:04:05Z"));
    expect(ropa.generatedAt).toBe("2026-01-02T03:04:05.000Z");
    expect(ropa.processors.map((p) => p.kind)).toEqual(["PostgreSQL", "MongoDB", "RabbitMQ", "Redis"]);
    expect(ropa.controller.name).toContain("CONTROLLER_NAME");
    expect(ropa.controller.dpoContact).toContain("DPO_CONTACT");
    const envelopes = ropa.categories.find((c) => c.category === "envelope metadata and ciphertext");
    expect(envelopes?.stores).toEqual(["MongoDB", "RabbitMQ"]);
    expect(envelopes?.retention.days).toBe(30);
    expect(envelopes?.retention.rule).toContain("x-message-ttl");
    expect(envelopes?.retention.rule).toContain("TTL index");
    expect(ropa.categories.find((c) => c.category === "audit")?.retention.days).toBe(365);
    expect(ropa.categories.find((c) => c.category === "presence")?.stores).toEqual(["Redis"]);
    // Rate-limit counters keyed by client address live where the limiter keeps them.
    expect(ropa.categories.find((c) => c.category === "abuse prevention")?.stores).toEqual(["Redis"]);
    expect(ropa.registration).toEqual({
      mode: "open",
      rule: "anyone may create an account (at most 10 per client address per hour)",
    });
    expect(buildRopa({ ...config, registration: "invite" }).registration.rule).toContain(
      "registration token",
    );
    expect(ropa.securityMeasures.join("\n")).toContain("bound to 0.0.0.0 (not loopback)");
    expect(ropa.securityMeasures.join("\n")).toContain("terminated by the reverse proxy");
    const native = buildRopa({
      ...config,
      tls: { certFile: "/etc/cb/cert.pem", keyFile: "/etc/cb/key.pem" },
    });
    expect(native.securityMeasures).toContain("TLS 1.3 only on the public listener (native)");
  });
});

describe("a production node without CONTROLLER_NAME or DPO_CONTACT", () => {
  test("says so at start; one with both does not", async () => {
    const warning = '"msg":"the record of processing (GET /admin/v1/ropa) names no controller or DPO contact';
    const production = {
      NODE_ENV: "production",
      ADMIN_TOKEN,
      PASSWORD_HASH_MEMORY_KIB: "19456",
      PASSWORD_HASH_TIME_COST: "2",
    };
    const unnamed = await startTestNode("pglite", {
      env: { ...production, DPO_CONTACT: "dpo@acme.example" },
    });
    try {
      const logs = unnamed.logs.join("");
      expect(logs).toContain(warning);
      expect(logs).toContain('"unset":["CONTROLLER_NAME"]');
    } finally {
      await unnamed.teardown();
    }
    const named = await startTestNode("pglite", {
      env: { ...production, CONTROLLER_NAME: "Acme School", DPO_CONTACT: "dpo@acme.example" },
    });
    try {
      expect(named.logs.join("")).toContain("clearbox node started");
      expect(named.logs.join("")).not.toContain(warning);
    } finally {
      await named.teardown();
    }
  });
});
