import { describe, expect, test } from "bun:test";
import { DELIVERY_LATENCY_BUCKETS, Metrics } from "../../src/observability/metrics.ts";

/** The value of one exposition line, found by its exact name-and-labels prefix. */
function line(exposition: string, prefix: string): number {
  const found = exposition.split("\n").find((l) => l.startsWith(prefix));
  if (!found) throw new Error(`no line starting with ${prefix}`);
  return Number(found.slice(found.lastIndexOf(" ") + 1));
}

describe("Metrics: the hot path's tallies as Prometheus series", () => {
  test("the latency histogram is cumulative per bucket, with +Inf, sum and count, per path", async () => {
    const metrics = new Metrics("n1");
    const t = metrics.tallies;
    // Delivered 0.5 ms, 20 ms and 40 h (past the last finite bucket, a day) after acceptance; one offline after 30 s.
    t.delivered("live", 1_000, 1_000.5);
    t.delivered("live", 1_000, 1_020);
    t.delivered("live", 1_000, 1_000 + 7_200_000 * 20);
    t.delivered("offline", 0, 30_000);
    const text = await metrics.registry.metrics();
    const bucket = (le: string, path = "live") =>
      line(text, `clearbox_delivery_latency_seconds_bucket{le="${le}",path="${path}",node="n1"}`);
    expect(bucket("0.001")).toBe(1);
    expect(bucket("0.01")).toBe(1);
    expect(bucket("0.025")).toBe(2);
    expect(bucket("86400")).toBe(2);
    expect(bucket("+Inf")).toBe(3);
    expect(line(text, 'clearbox_delivery_latency_seconds_count{path="live",node="n1"}')).toBe(3);
    expect(line(text, 'clearbox_delivery_latency_seconds_sum{path="live",node="n1"}')).toBeCloseTo(
      0.0005 + 0.02 + 144_000,
      6,
    );
    expect(bucket("30", "offline")).toBe(1);
    expect(bucket("10", "offline")).toBe(0);
    expect(text).toContain("# TYPE clearbox_delivery_latency_seconds histogram");
    // Every finite bound is exported, in order, then +Inf.
    const les = [...text.matchAll(/clearbox_delivery_latency_seconds_bucket\{le="([^"]+)",path="live"/g)].map(
      (m) => m[1],
    );
    expect(les).toEqual([...DELIVERY_LATENCY_BUCKETS.map(String), "+Inf"]);
    // A clock that went backwards counts as zero latency, not a negative one.
    t.delivered("live", 5_000, 4_000);
    expect(
      line(
        await metrics.registry.metrics(),
        `clearbox_delivery_latency_seconds_bucket{le="0.001",path="live",node="n1"}`,
      ),
    ).toBe(2);
  });

  test("counters follow the tallies across scrapes and never go down; unknown refusal codes count as internal", async () => {
    const metrics = new Metrics("n1");
    const t = metrics.tallies;
    t.accepted += 3;
    t.reject("busy");
    t.reject("something new");
    t.refuse("login-address");
    let text = await metrics.registry.metrics();
    expect(line(text, 'clearbox_messages_accepted_total{node="n1"}')).toBe(3);
    expect(line(text, 'clearbox_messages_rejected_total{code="busy",node="n1"}')).toBe(1);
    expect(line(text, 'clearbox_messages_rejected_total{code="internal",node="n1"}')).toBe(1);
    expect(line(text, 'clearbox_messages_rejected_total{code="not_member",node="n1"}')).toBe(0);
    expect(text).not.toContain("something new");
    expect(line(text, 'clearbox_rate_limit_refusals_total{limit="login-address",node="n1"}')).toBe(1);
    expect(line(text, 'clearbox_rate_limit_refusals_total{limit="device_frames",node="n1"}')).toBe(0);
    t.accepted += 2;
    text = await metrics.registry.metrics();
    expect(line(text, 'clearbox_messages_accepted_total{node="n1"}')).toBe(5);
    // A scrape with nothing new changes nothing.
    text = await metrics.registry.metrics();
    expect(line(text, 'clearbox_messages_accepted_total{node="n1"}')).toBe(5);
  });

  test("without sources wired, gauges read zero and the scrape does not fail", async () => {
    const text = await new Metrics("n1").registry.metrics();
    expect(line(text, 'clearbox_connections{node="n1"}')).toBe(0);
    expect(line(text, 'clearbox_erasure_jobs{state="pending",node="n1"}')).toBe(0);
  });

  test("a scrape right after a change shows both erasure gauges from the same read, one read per scrape", async () => {
    const metrics = new Metrics("n1");
    let jobs = { pending: 0, done: 0, oldestPendingSeconds: 0 };
    let reads = 0;
    metrics.observe({
      erasures: async () => {
        reads++;
        await Bun.sleep(1);
        return jobs;
      },
    });
    await metrics.registry.metrics();
    jobs = { pending: 2, done: 5, oldestPendingSeconds: 90 };
    const text = await metrics.registry.metrics();
    expect(line(text, 'clearbox_erasure_jobs{state="pending",node="n1"}')).toBe(2);
    expect(line(text, 'clearbox_erasure_jobs{state="done",node="n1"}')).toBe(5);
    expect(line(text, 'clearbox_erasure_oldest_pending_seconds{node="n1"}')).toBe(90);
    expect(reads).toBe(2);
  });
});
