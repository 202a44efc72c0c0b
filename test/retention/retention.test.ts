import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomUUID } from "node:crypto";
import { connect } from "amqplib";
import { sql } from "drizzle-orm";
import { PostgresAuditTrail } from "../../src/audit/service.ts";
import { ConfigError, loadConfig } from "../../src/config/index.ts";
import { refreshTokens } from "../../src/db/schema.ts";
import { AmqpOfflineQueue } from "../../src/messaging/amqp-offline-queue.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { RetentionJob } from "../../src/retention/index.ts";
import { countOf } from "../audit/support.ts";
import { AMQP_URL, runPrefix } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

const DAY = 86_400_000;

function envelope(senderUser: string, recipientUser: string, ts: number): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser,
    senderDevice: 1,
    recipientUser,
    recipientDevice: 1,
    groupId: null,
    ts,
    type: 3,
    body: Buffer.from("ciphertext").toString("base64"),
  };
}

describe.each(BACKENDS)("retention on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend, { env: { RETENTION_DAYS: "10", AUDIT_RETENTION_DAYS: "100" } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("one run removes old envelopes, expired refresh tokens and old audit entries; the chain still verifies", async () => {
    const db = node.database.db;
    // The old audit entries go first: the chain's times never go backwards.
    expect(await countOf(db, sql`select count(*)::int from audit_log`)).toBe(0);
    const past = new PostgresAuditTrail(db, () => new Date(Date.now() - 150 * DAY));
    for (const i of [1, 2, 3]) await past.record({ action: "test.old", actor: "system", details: { i } });
    const [lastOld] = (await past.list({ limit: 3 })).slice(-1);

    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const now = Date.now();
    const old = envelope(alice.userId, bob.userId, now - 11 * DAY);
    const fresh = envelope(alice.userId, bob.userId, now - 9 * DAY);
    await node.log.append([old, fresh]);
    const hash = (token: string) => createHash("sha256").update(token).digest("hex");
    await db.insert(refreshTokens).values([
      { tokenHash: hash("expired"), userId: bob.userId, deviceId: 1, expiresAt: new Date(now - 1000) },
      {
        tokenHash: hash("spent-not-expired"),
        userId: bob.userId,
        deviceId: 1,
        expiresAt: new Date(now + DAY),
        spentAt: new Date(now - DAY),
      },
    ]);
    const tokensBefore = await countOf(db, sql`select count(*)::int from refresh_tokens`);

    const report = await node.retention.runOnce();
    expect(report).toMatchObject({ envelopes: 1, refreshTokens: 1, auditEntries: 3 });
    expect(report.cutoffs.envelopes).toBe(
      new Date(Date.parse(report.cutoffs.refreshTokens) - 10 * DAY).toISOString(),
    );

    expect((await node.log.undelivered(bob.userId)).map((e) => e.id)).toEqual([fresh.id]);
    expect(await countOf(db, sql`select count(*)::int from refresh_tokens`)).toBe(tokensBefore - 1);
    // A live refresh token still works; the spent one is kept for reuse detection until it expires.
    expect((await client.post("/v1/sessions/refresh", { refreshToken: alice.refreshToken })).status).toBe(
      201,
    );
    expect(
      await countOf(
        db,
        sql`select count(*)::int from refresh_tokens where token_hash = ${hash("spent-not-expired")}`,
      ),
    ).toBe(1);

    const remaining = await node.audit.entriesAbout(alice.userId);
    expect(remaining.map((e) => e.action)).toEqual(["session.login"]);
    const all = await new PostgresAuditTrail(db).list({ limit: 100 });
    expect(all.some((e) => e.action === "test.old")).toBe(false);
    const pruned = all.find((e) => e.action === "audit.pruned");
    expect(pruned?.details).toMatchObject({
      removed: 3,
      lastRemovedSeq: lastOld.seq,
      lastRemovedHash: lastOld.hash,
    });
    expect(all[0].prevHash).toBe(lastOld.hash);
    const verify = await api(node.adminUrl).get("/admin/v1/audit/verify", ADMIN_TOKEN);
    const newest = all[all.length - 1];
    expect(verify.body).toEqual({
      ok: true,
      entries: all.length,
      head: { seq: newest.seq, hash: newest.hash, at: newest.at },
    });

    const line = node.logs.map((l) => JSON.parse(l)).find((l) => l.msg === "retention run");
    expect(line.retention).toMatchObject({ envelopes: 1, refreshTokens: 1, auditEntries: 3 });
  });

  test("concurrent runs on several nodes are harmless: the work is split, nothing is removed twice", async () => {
    const db = node.database.db;
    const carol = await registerAndLogin(client);
    const now = Date.now();
    await node.log.append(
      Array.from({ length: 20 }, (_, i) => envelope(carol.userId, carol.userId, now - 20 * DAY - i)),
    );
    const jobs = Array.from(
      { length: 3 },
      () =>
        new RetentionJob({
          db,
          log: node.log,
          audit: new PostgresAuditTrail(db),
          retentionDays: 10,
          auditRetentionDays: 100,
          intervalMs: 3_600_000,
          logger: node.logger,
        }),
    );
    const reports = await Promise.all([...jobs.map((j) => j.runOnce()), node.retention.runOnce()]);
    expect(reports.reduce((n, r) => n + r.envelopes, 0)).toBe(20);
    expect(reports.every((r) => r.auditEntries === 0)).toBe(true);
    expect(await node.log.undelivered(carol.userId)).toEqual([]);
    expect((await node.audit.entriesAbout(carol.userId)).map((e) => e.action)).toEqual(["session.login"]);
    expect(await new PostgresAuditTrail(db).verify()).toMatchObject({ ok: true });
  });

  test("concurrent prunes remove the head once; the anchor moves to the newest removed hash and verifies", async () => {
    const db = node.database.db;
    const trail = new PostgresAuditTrail(db);
    const everything = await trail.list({ limit: 1000 });
    const last = everything[everything.length - 1];
    // Everything so far is older than the cut-off; three nodes' jobs race for it.
    await Bun.sleep(5);
    const cutoff = new Date();
    const results = await Promise.all([1, 2, 3].map(() => new PostgresAuditTrail(db).prune(cutoff)));
    const winners = results.filter((r) => r.removed > 0);
    expect(winners).toEqual([
      { removed: everything.length, lastRemovedSeq: last.seq, lastRemovedHash: last.hash },
    ]);
    const left = await trail.list({ limit: 10 });
    expect(left.map((e) => e.action)).toEqual(["audit.pruned"]);
    expect(left[0].prevHash).toBe(last.hash);
    expect(await trail.verify()).toEqual({
      ok: true,
      entries: 1,
      head: { seq: left[0].seq, hash: left[0].hash, at: left[0].at },
    });
    // A head kept from before the prune is gone with it, which the prune explains.
    expect((await trail.verify({ seq: last.seq, hash: last.hash })).ok).toBe(true);
  });
});

describe("retention schedule", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { RETENTION_INTERVAL_SECONDS: "1" } });
  });
  afterAll(() => node?.teardown());

  test("runs on its own every RETENTION_INTERVAL_SECONDS and logs what it removed", async () => {
    const runs = () => node.logs.filter((l) => l.includes('"msg":"retention run"')).length;
    expect(runs()).toBe(0);
    const deadline = Date.now() + 20_000;
    while (runs() < 2 && Date.now() < deadline) await Bun.sleep(50);
    expect(runs()).toBeGreaterThanOrEqual(2);
    const line = JSON.parse(node.logs.find((l) => l.includes('"msg":"retention run"')) as string);
    expect(line.retention).toMatchObject({ envelopes: 0, refreshTokens: 0, auditEntries: 0 });
  });

  test("sweeps idle offline queues in its first pass only, and reports what the sweep saw", async () => {
    let sweeps = 0;
    const job = new RetentionJob({
      db: node.database.db,
      log: node.log,
      audit: new PostgresAuditTrail(node.database.db),
      retentionDays: 30,
      auditRetentionDays: 365,
      intervalMs: 3_600_000,
      logger: node.logger,
      sweepIdleQueues: async () => {
        sweeps++;
        return { devices: 7, idle: 2 };
      },
    });
    expect((await job.runOnce()).idleQueues).toEqual({ devices: 7, idle: 2 });
    expect((await job.runOnce()).idleQueues).toBeNull();
    expect(sweeps).toBe(1);
  });
});

describe("retention configuration", () => {
  const base = { DATA_DIR: "/tmp/clearbox-retention-config", JWT_SECRET: "x".repeat(40) };

  test("defaults: audit entries 365 days, a run every hour, no controller named", () => {
    const config = loadConfig(base);
    expect(config).toMatchObject({
      retentionDays: 30,
      auditRetentionDays: 365,
      retentionIntervalSeconds: 3600,
    });
    expect(config.controllerName).toBeUndefined();
    expect(config.dpoContact).toBeUndefined();
  });

  test("bad values stop start-up with a message naming the variable", () => {
    for (const [name, value] of [
      ["AUDIT_RETENTION_DAYS", "0"],
      ["AUDIT_RETENTION_DAYS", "forever"],
      ["RETENTION_INTERVAL_SECONDS", "0"],
      ["RETENTION_INTERVAL_SECONDS", "86401"],
      ["CONTROLLER_NAME", "x".repeat(201)],
    ]) {
      expect(() => loadConfig({ ...base, [name]: value })).toThrow(ConfigError);
      expect(() => loadConfig({ ...base, [name]: value })).toThrow(new RegExp(`${name}: expected`));
    }
  });
});

describe("RabbitMQ offline queues", () => {
  test("are declared with x-message-ttl and x-expires equal to the retention period", async () => {
    const prefix = runPrefix();
    const queue = await AmqpOfflineQueue.open(AMQP_URL, { prefix, retentionDays: 3 });
    const user = randomUUID();
    await queue.flush(user, 1, [envelope(randomUUID(), user, Date.now())]);
    const name = queue.queueName(user, 1);
    const connection = await connect(AMQP_URL);
    try {
      const declare = async (ttl: number) => {
        const channel = await connection.createChannel();
        channel.on("error", () => {});
        try {
          await channel.assertQueue(name, {
            durable: true,
            arguments: { "x-queue-type": "classic", "x-message-ttl": ttl, "x-expires": ttl },
          });
          await channel.close();
          return "ok";
        } catch (error) {
          return String((error as Error).message);
        }
      };
      // RabbitMQ accepts a redeclaration only with the arguments the queue already has.
      expect(await declare(3 * DAY)).toBe("ok");
      expect(await declare(4 * DAY)).toContain("PRECONDITION_FAILED");
    } finally {
      const channel = await connection.createChannel();
      await channel.deleteQueue(name);
      await connection.close();
      await queue.close();
    }
  });
});
