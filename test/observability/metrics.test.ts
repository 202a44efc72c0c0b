import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { ackOf, TestSocket } from "../support/ws.ts";

const ROOT = resolve(import.meta.dir, "../..");
const RULES = join(ROOT, "deploy/prometheus/clearbox-alerts.yml");
const RULE_TESTS = join(ROOT, "deploy/prometheus/clearbox-alerts.test.yml");
const PROMETHEUS_CONFIG = join(ROOT, "deploy/prometheus/prometheus.yml");
const DASHBOARD = join(ROOT, "deploy/grafana/clearbox-dashboard.json");
/** Series Prometheus makes itself (not exported by a node). */
const PROMETHEUS_SERIES = new Set(["up"]);

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** Runs promtool (Debian's `prometheus` package, installed by .ci/run); fails the test when it is missing. */
function promtool(args: string[], stdin?: string): { code: number; output: string } {
  const path = Bun.which("promtool");
  if (!path) throw new Error("promtool not found: install Debian's prometheus package (.ci/run does)");
  const run = Bun.spawnSync([path, ...args], { stdin: stdin === undefined ? "ignore" : Buffer.from(stdin) });
  return { code: run.exitCode ?? -1, output: `${run.stdout.toString()}${run.stderr.toString()}` };
}

/** Metric names a PromQL expression reads: `clearbox_…` identifiers (histogram suffixes dropped) and Prometheus' own. */
function metricNames(expr: string): string[] {
  const names = new Set<string>();
  for (const [name] of expr.matchAll(/\bclearbox_[a-z0-9_]+\b/g)) {
    names.add(name.replace(/_(bucket|sum|count)$/, ""));
  }
  for (const [name] of expr.matchAll(/\bup\{/g)) names.add(name.slice(0, -1));
  return [...names];
}

/** Every expression of the dashboard's panels (and its template queries). */
function dashboardExpressions(): string[] {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
    panels: { targets?: { expr: string }[] }[];
    templating: { list: { definition?: string }[] };
  };
  const exprs = dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((t) => t.expr));
  for (const variable of dashboard.templating.list) if (variable.definition) exprs.push(variable.definition);
  return exprs;
}

/** Every `expr:` of the alert rules file (block scalars included). */
function ruleExpressions(): string[] {
  const text = readFileSync(RULES, "utf8");
  const exprs: string[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const match = /^(\s*)expr:\s*(.*)$/.exec(lines[i]);
    if (!match) continue;
    if (match[2] !== "|" && match[2] !== ">") {
      exprs.push(match[2]);
      continue;
    }
    const body: string[] = [];
    while (
      i + 1 < lines.length &&
      (lines[i + 1].trim() === "" || lines[i + 1].search(/\S/) > match[1].length)
    )
      body.push(lines[++i]);
    exprs.push(body.join("\n"));
  }
  return exprs;
}

/** Metric families in a Prometheus text exposition: name → its sample lines. */
function families(exposition: string): Map<string, string[]> {
  const byName = new Map<string, string[]>();
  for (const line of exposition.split("\n")) {
    const type = /^# TYPE (\S+) /.exec(line);
    if (type) byName.set(type[1], []);
  }
  for (const line of exposition.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)?.[1] as string;
    const family = byName.has(sample) ? sample : sample.replace(/_(bucket|sum|count)$/, "");
    byName.get(family)?.push(line);
  }
  return byName;
}

/** The value of the sample `name{…labels…}` (labels given must all match; the node label is ignored). */
function sampleValue(
  exposition: string,
  name: string,
  labels: Record<string, string> = {},
  options: { absentIsZero?: boolean } = {},
): number {
  let total = 0;
  let found = false;
  for (const line of exposition.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
    found = true;
  }
  if (!found && !options.absentIsZero) throw new Error(`no sample ${name} ${JSON.stringify(labels)}`);
  return total;
}

async function scrape(node: TestNode): Promise<string> {
  const res = await fetch(`${node.adminUrl}/metrics`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  expect(res.status).toBe(200);
  return res.text();
}

async function waitFor<T>(read: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

describe("alert rules and the Prometheus configuration", () => {
  test("promtool check rules accepts the alert rules", () => {
    const { code, output } = promtool(["check", "rules", RULES]);
    expect(output).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  test("promtool test rules: every alert fires on the series that should raise it, and only then", () => {
    const { code, output } = promtool(["test", "rules", RULE_TESTS]);
    expect(output).toContain("SUCCESS");
    expect(code).toBe(0);
  });

  test("promtool check config accepts the example scrape configuration", () => {
    const dir = mkdtempSync(join(tmpdir(), "clearbox-prom-"));
    try {
      const token = join(dir, "token");
      writeFileSync(token, ADMIN_TOKEN);
      copyFileSync(RULES, join(dir, "clearbox-alerts.yml"));
      const config = readFileSync(PROMETHEUS_CONFIG, "utf8").replace(
        "/etc/prometheus/clearbox-admin-token",
        token,
      );
      expect(config).toContain(token);
      writeFileSync(join(dir, "prometheus.yml"), config);
      const { code, output } = promtool(["check", "config", join(dir, "prometheus.yml")]);
      expect(output).toContain("SUCCESS");
      expect(code).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the dashboard and the rules name metrics (the extraction finds them)", () => {
    const fromDashboard = dashboardExpressions().flatMap(metricNames);
    const fromRules = ruleExpressions().flatMap(metricNames);
    expect(ruleExpressions()).toHaveLength(8);
    expect(fromRules).toContain("clearbox_delivery_latency_seconds");
    expect(fromRules).toContain("clearbox_erasure_oldest_pending_seconds");
    expect(fromRules).toContain("up");
    expect(new Set(fromDashboard).size).toBeGreaterThan(20);
  });
});

describe("messaging metrics of two nodes on PostgreSQL, Redis and RabbitMQ", () => {
  const prefix = runPrefix();
  let database: TestDatabase;
  let a: TestNode;
  let b: TestNode;
  const personal: string[] = [];
  let expositions: string[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    const env = {
      ...stackEnv("services", prefix),
      LOGIN_FAILURES_PER_ADDRESS: "3",
      LOGIN_FAILURES_PER_ACCOUNT: "7",
    };
    a = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "metrics-a" } });
    b = await startTestNode("postgres", { database, env: { ...env, NODE_ID: "metrics-b" } });
    await waitFor(
      async () => (a.actors.ringMembers().length === 2 && b.actors.ringMembers().length === 2) || undefined,
      "both nodes in the ring",
    );

    // Traffic that moves every series: a live delivery across nodes, an offline one drained on
    // reconnect, a refusal, a rate-limit refusal, an erasure, a retention pass.
    const alice = await registerAndLogin(api(a.url));
    const bob = await registerAndLogin(api(b.url));
    const carol = await registerAndLogin(api(a.url));
    for (const user of [alice, bob, carol]) personal.push(user.userId, user.username);
    const aliceSocket = await TestSocket.open(a.url, alice.accessToken);
    const bobSocket = await TestSocket.open(b.url, bob.accessToken);
    const send = (to: string, devices: number[]) => {
      const id = randomUUID();
      aliceSocket.send({
        type: "send",
        id,
        to: { user: to },
        messages: devices.map((deviceId) => ({ deviceId, type: 3, body: b64("hello") })),
      });
      return aliceSocket.reply(id, 30_000);
    };
    expect((await send(bob.userId, [1])).type).toBe("accepted");
    const [live] = await bobSocket.messages(1, 30_000);
    bobSocket.send(ackOf([live]));
    expect((await send(carol.userId, [1])).type).toBe("accepted");
    expect(await send(carol.userId, [1, 2])).toMatchObject({ type: "rejected", code: "mismatched_devices" });
    // Carol was offline: her envelope reaches her queue (once the actor flushed it), then her socket.
    await waitFor(
      async () =>
        sampleValue(await scrape(a), "clearbox_offline_envelopes_queued_total") +
          sampleValue(await scrape(b), "clearbox_offline_envelopes_queued_total") >
        0
          ? true
          : undefined,
      "carol's envelope in her offline queue",
    );
    const carolSocket = await TestSocket.open(b.url, carol.accessToken);
    const [drained] = await carolSocket.messages(1, 30_000);
    carolSocket.send(ackOf([drained]));
    // Wrong passwords until the login throttle refuses (429).
    let throttled = false;
    for (let i = 0; i < 20 && !throttled; i++) {
      const res = await api(a.url).post("/v1/sessions", {
        username: alice.username,
        password: "not the password",
        registrationId: 7,
      });
      throttled = res.status === 429;
    }
    expect(throttled).toBe(true);
    // Carol erases herself.
    const erased = await api(b.url).call("DELETE", "/v1/me", {
      token: carol.accessToken,
      body: { password: carol.password },
    });
    expect(erased.status).toBe(202);
    await waitFor(async () => {
      const res = await api(b.url).get(`/v1/erasures/${erased.body.erasureId}`);
      return res.body.status === "done" ? true : undefined;
    }, "the erasure to finish");
    await a.retention.runOnce();
    await Promise.all([aliceSocket.close(), bobSocket.close(), carolSocket.close().catch(() => undefined)]);
    expositions = [await scrape(a), await scrape(b)];
    // Two nodes, an erasure and a login throttle: generous under a loaded machine's full suite.
  }, 180_000);

  afterAll(async () => {
    await a?.teardown();
    await b?.teardown();
    await database?.drop();
  });

  test("every metric the dashboard and the alert rules use is exported by each node", () => {
    const used = new Set([...dashboardExpressions(), ...ruleExpressions()].flatMap(metricNames));
    for (const exposition of expositions) {
      const exported = families(exposition);
      const missing = [...used].filter((name) => !PROMETHEUS_SERIES.has(name) && !exported.has(name));
      expect(missing).toEqual([]);
      // With at least one sample each (labelled series are initialised).
      const empty = [...used].filter((name) => exported.has(name) && exported.get(name)?.length === 0);
      expect(empty).toEqual([]);
    }
  });

  test("the traffic shows up in the counters, summed over both nodes", () => {
    // A labelled series a node never touched may be absent there; the sum over both must exist.
    const total = (name: string, labels?: Record<string, string>) => {
      expect(expositions.some((text) => sampleValue(text, name, labels, { absentIsZero: true }) >= 0)).toBe(
        true,
      );
      sampleValue(expositions.join("\n"), name, labels);
      return expositions.reduce(
        (sum, text) => sum + sampleValue(text, name, labels, { absentIsZero: true }),
        0,
      );
    };
    expect(total("clearbox_messages_accepted_total")).toBe(2);
    expect(total("clearbox_messages_rejected_total", { code: "mismatched_devices" })).toBe(1);
    expect(total("clearbox_messages_rejected_total", { code: "internal" })).toBe(0);
    expect(total("clearbox_messages_delivered_total", { path: "live" })).toBe(1);
    expect(total("clearbox_messages_delivered_total", { path: "offline" })).toBe(1);
    expect(total("clearbox_offline_envelopes_queued_total")).toBe(1);
    expect(total("clearbox_offline_envelopes_drained_total")).toBe(1);
    expect(total("clearbox_delivery_latency_seconds_count", { path: "live" })).toBe(1);
    expect(total("clearbox_delivery_latency_seconds_bucket", { path: "live", le: "+Inf" })).toBe(1);
    expect(total("clearbox_group_commit_batch_size_count", { operation: "append" })).toBeGreaterThanOrEqual(
      1,
    );
    expect(total("clearbox_group_commit_batch_size_sum", { operation: "append" })).toBe(2);
    expect(total("clearbox_rate_limit_refusals_total", { limit: "login-failures-address" })).toBeGreaterThan(
      0,
    );
    expect(total("clearbox_erasures_completed_total")).toBe(1);
    // The job table is shared: each node reports the same count.
    expect(sampleValue(expositions[0], "clearbox_erasure_jobs", { state: "done" })).toBe(1);
    expect(sampleValue(expositions[0], "clearbox_erasure_jobs", { state: "pending" })).toBe(0);
    expect(sampleValue(expositions[0], "clearbox_cluster_ring_members")).toBe(2);
    // Carol's socket was on b, Alice's on a: at least one envelope crossed the transport.
    expect(total("clearbox_transport_frames_sent_total")).toBeGreaterThan(0);
    expect(total("clearbox_transport_frames_received_total")).toBeGreaterThan(0);
    expect(total("clearbox_transport_transfers_confirmed_total")).toBeGreaterThan(0);
    expect(total("clearbox_transport_transfers_failed_total")).toBe(0);
    expect(total("clearbox_actors_active", { kind: "user" })).toBeGreaterThan(0);
  });

  test("connections and mailboxes are gauges read at scrape time", async () => {
    const before = sampleValue(await scrape(a), "clearbox_connections");
    const alice = await registerAndLogin(api(a.url));
    personal.push(alice.userId, alice.username);
    const socket = await TestSocket.open(a.url, alice.accessToken);
    await waitFor(
      async () => (sampleValue(await scrape(a), "clearbox_connections") === before + 1 ? true : undefined),
      "the new connection in the gauge",
    );
    await socket.close();
    await waitFor(
      async () => (sampleValue(await scrape(a), "clearbox_connections") === before ? true : undefined),
      "the gauge back down",
    );
    expect(sampleValue(await scrape(a), "clearbox_actor_mailbox_messages")).toBeGreaterThanOrEqual(0);
  });

  test("no label names a person: no user id or username appears anywhere in /metrics", () => {
    expect(personal.length).toBeGreaterThan(0);
    for (const exposition of expositions)
      for (const value of personal) expect(exposition).not.toContain(value);
  });

  test("promtool check metrics finds no problem in the exposition (naming conventions, format)", () => {
    const { code, output } = promtool(["check", "metrics"], expositions[0]);
    expect(output).toBe("");
    expect(code).toBe(0);
  });
});

describe("messaging metrics of the embedded default (PGlite, SQLite log)", () => {
  let node: TestNode;
  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(() => node?.teardown());

  test("exports every metric the dashboard and the rules use, with the embedded log's group commits", async () => {
    const alice = await registerAndLogin(api(node.url));
    const bob = await registerAndLogin(api(node.url));
    const socket = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    socket.send({
      type: "send",
      id,
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body: b64("hello") }],
    });
    expect((await socket.reply(id, 30_000)).type).toBe("accepted");
    const bobSocket = await TestSocket.open(node.url, bob.accessToken);
    await bobSocket.messages(1, 30_000);
    const exposition = await scrape(node);
    const exported = families(exposition);
    const used = new Set([...dashboardExpressions(), ...ruleExpressions()].flatMap(metricNames));
    expect([...used].filter((name) => !PROMETHEUS_SERIES.has(name) && !exported.has(name))).toEqual([]);
    expect(sampleValue(exposition, "clearbox_messages_accepted_total")).toBe(1);
    expect(sampleValue(exposition, "clearbox_messages_delivered_total")).toBe(1);
    // The embedded log's single writer commits every kind of write together.
    expect(
      sampleValue(exposition, "clearbox_group_commit_batch_size_count", { operation: "write" }),
    ).toBeGreaterThan(0);
    expect(sampleValue(exposition, "clearbox_erasure_jobs", { state: "pending" })).toBe(0);
    expect(sampleValue(exposition, "clearbox_cluster_ring_members")).toBe(1);
    await Promise.all([socket.close(), bobSocket.close()]);
  });
});
