import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { AdminRefusals } from "../../src/admin/refusals.ts";
import type { PostgresAuditTrail } from "../../src/audit/service.ts";
import { type Api, api } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";

function tally(statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

describe("refused admin calls", () => {
  let node: TestNode;
  let admin: Api;
  let trail: PostgresAuditTrail;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { TRUSTED_PROXIES: "127.0.0.1" } });
    admin = api(node.adminUrl);
    trail = node.audit as PostgresAuditTrail;
  });
  afterAll(() => node?.teardown());

  const lastSeq = async () => Math.max(0, ...(await trail.list({ limit: 1000 })).map((e) => e.seq));
  const refusedLines = () => node.logs.filter((l) => l.includes("admin calls refused")).length;

  test("200 wrong-token calls write one audit entry with their count; past 10 a minute the address gets 429", async () => {
    const before = await lastSeq();
    const linesBefore = refusedLines();
    const statuses: number[] = [];
    for (let i = 0; i < 200; i++) {
      statuses.push(
        (
          await admin.call("GET", "/admin/v1/ropa", {
            token: `wrong-token-${i}-0123456789`,
            headers: { "x-forwarded-for": "203.0.113.66" },
          })
        ).status,
      );
    }
    expect(tally(statuses)).toEqual({ 401: 10, 429: 190 });
    const limited = await admin.call("GET", "/metrics", { headers: { "x-forwarded-for": "203.0.113.66" } });
    expect(limited.status).toBe(429);
    expect(limited.body.error.code).toBe("rate_limited");
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0);
    // Nothing is written while the window is open...
    expect((await trail.list({ after: before, limit: 1000 })).length).toBe(0);
    expect(refusedLines()).toBe(linesBefore);
    // ...and one entry (and one log line) when it closes.
    await node.adminRefusals.flush();
    const entries = await trail.list({ after: before, limit: 1000 });
    expect(entries.map((e) => e.action)).toEqual(["admin.refused"]);
    expect(entries[0].details).toMatchObject({
      count: 201,
      reasons: { wrong_token: 200, missing_token: 1 },
      statuses: { "401": 10, "429": 191 },
      addresses: 1,
    });
    expect(refusedLines()).toBe(linesBefore + 1);
    expect((await trail.verify()).ok).toBe(true);
  });

  test("one flooding address neither limits another nor locks out the right token", async () => {
    for (let i = 0; i < 12; i++) {
      await admin.call("GET", "/metrics", { headers: { "x-forwarded-for": "198.51.100.66" } });
    }
    const flooder = await admin.call("GET", "/metrics", { headers: { "x-forwarded-for": "198.51.100.66" } });
    expect(flooder.status).toBe(429);
    const other = await admin.call("GET", "/metrics", { headers: { "x-forwarded-for": "198.51.100.67" } });
    expect(other.status).toBe(401);
    const rightToken = await admin.call("GET", "/admin/v1/ropa", {
      token: ADMIN_TOKEN,
      headers: { "x-forwarded-for": "198.51.100.66" },
    });
    expect(rightToken.status).toBe(200);
    await node.adminRefusals.flush();
  });

  test("a window closes on its own a window's length after its first refusal", async () => {
    const before = await lastSeq();
    const refusals = new AdminRefusals({
      audit: trail,
      limiter: node.rateLimiter,
      logger: node.logger,
      // Long enough for the three refusals to fall in it on a loaded machine (at 200 ms a stall
      // between them closed the window early and wrote two entries).
      windowMs: 2000,
    });
    for (let i = 0; i < 3; i++) expect(await refusals.refused("192.0.2.5", "wrong_token")).toBeUndefined();
    const deadline = Date.now() + 15_000;
    let entries = await trail.list({ after: before, limit: 10 });
    while (entries.length === 0 && Date.now() < deadline) {
      await Bun.sleep(50);
      entries = await trail.list({ after: before, limit: 10 });
    }
    expect(entries.map((e) => [e.action, e.details.count])).toEqual([["admin.refused", 3]]);
    await refusals.stop();
    // Nothing more to write: stop adds no entry.
    expect((await trail.list({ after: before, limit: 10 })).length).toBe(1);
  });
});
