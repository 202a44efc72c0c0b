import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { KEY_FETCH_LIMITS, KeyService } from "../../src/keys/service.ts";
import {
  MemoryRateLimiter,
  type RateLimitDecision,
  type RateLimiter,
  type RateLimitRule,
} from "../../src/ratelimit/index.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { lockWaiters } from "../support/postgres.ts";
import { validUpload } from "./fixtures.ts";

/**
 * The real in-memory limiter, whose per-target spend waits for the test to open a gate: the fetch
 * stops there, between reading the target's keys and taking its one-time keys, for as long as the
 * test wants an upload to run.
 */
class GatedLimiter implements RateLimiter {
  private readonly inner = new MemoryRateLimiter();
  private open!: () => void;
  private readonly gate = new Promise<void>((resolve) => {
    this.open = resolve;
  });
  private arrived!: () => void;
  /** Resolves once the fetch reached the per-target spend. */
  readonly reached = new Promise<void>((resolve) => {
    this.arrived = resolve;
  });

  openGate(): void {
    this.open();
  }

  async hit(rule: RateLimitRule, key: string, cost?: number): Promise<RateLimitDecision> {
    if (rule.name === KEY_FETCH_LIMITS.perTarget.name) {
      this.arrived();
      await this.gate;
    }
    return this.inner.hit(rule, key, cost);
  }
  release(rule: RateLimitRule, key: string, cost?: number): Promise<void> {
    return this.inner.release(rule, key, cost);
  }
  reset(rule: RateLimitRule, key: string): Promise<number> {
    return this.inner.reset(rule, key);
  }
  peek(rule: RateLimitRule, key: string): Promise<RateLimitDecision> {
    return this.inner.peek(rule, key);
  }
  forget(fragment: string): Promise<number> {
    return this.inner.forget(fragment);
  }
}

/**
 * A key fetch that crosses an upload of a new identity key. Read apart (the identity key in one
 * statement, the one-time keys in later ones), the bundle paired the old identity key with a
 * one-time key uploaded under the new one: the session the requester builds fails, and the key is
 * spent. PostgreSQL: the test tells an upload waiting for the fetch's lock from one that finished.
 */
describe("a key fetch crossing an identity change (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("the bundle's one-time keys were uploaded under the identity key it hands out", async () => {
    const target = await registerAndLogin(client);
    const requester = await registerAndLogin(client);
    const first = (await validUpload(5)).upload;
    const second = (await validUpload(5)).upload;
    expect((await client.put("/v1/keys", first, target.accessToken)).status).toBe(204);

    const limiter = new GatedLimiter();
    const keys = new KeyService(node.database.db, limiter);
    const fetching = keys.fetchBundle(
      { userId: requester.userId, deviceId: requester.deviceId },
      target.userId,
    );
    await limiter.reached;
    // The target's device uploads a new identity key and new one-time keys meanwhile: it either
    // finishes, or waits for the fetch's lock on the device.
    let uploaded = false;
    const uploading = client.put("/v1/keys", second, target.accessToken).then((reply) => {
      uploaded = true;
      return reply;
    });
    for (let i = 0; i < 400 && !uploaded && (await lockWaiters(node.database.db)) === 0; i++)
      await Bun.sleep(25);
    limiter.openGate();
    const bundle = await fetching;
    expect((await uploading).status).toBe(204);

    const [device] = bundle.devices;
    const upload = device?.identityKey === first.identityKey ? first : second;
    expect(device?.identityKey).toBe(upload.identityKey);
    expect(device?.signedPreKey).toEqual(upload.signedPreKey);
    expect(upload.preKeys?.map((k) => k.publicKey)).toContain(device?.preKey?.publicKey as string);
    expect(upload.kyberPreKeys?.map((k) => k.publicKey)).toContain(device?.kyberPreKey.publicKey);
  });
});
