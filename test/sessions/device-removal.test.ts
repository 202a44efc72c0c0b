import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { and, eq, sql } from "drizzle-orm";
import { deviceRemovals } from "../../src/db/schema.ts";
import { DeviceService } from "../../src/devices/service.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { createLogger } from "../../src/observability/logger.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

function envelopeFor(userId: string, deviceId: number, senderUser: string): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser,
    senderDevice: 1,
    recipientUser: userId,
    recipientDevice: deviceId,
    groupId: null,
    ts: Date.now(),
    type: 1,
    body: Buffer.from("ciphertext for the removed device").toString("base64"),
  };
}

/**
 * A device removal is durable before its follow-ups (the user actor and offline queue, the log's
 * rows, the sockets) run: its `device_removals` row keeps the id from a new device until they have
 * all finished, and the retention pass finishes a removal a node left half done.
 */
describe.each(BACKENDS)("device removal on %s", (backend) => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode(backend);
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("a removed device's id is not given to a new device while the removal's follow-ups run", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 101 });
    expect(phone.deviceId).toBe(2);
    // A removal whose follow-up is still running (the account's actor slow to answer, say).
    const { promise: held, resolve: release } = Promise.withResolvers<void>();
    const { promise: started, resolve: followUpStarted } = Promise.withResolvers<void>();
    const devices = new DeviceService(node.database.db);
    devices.onRemoved(async () => {
      followUpStarted();
      await held;
    });
    const removal = devices.remove(alice.userId, phone.deviceId);
    await started;
    // Before the fix the smallest free id, 2, was handed out here, and the removal's follow-ups
    // then erased the new device's envelopes and closed its sockets.
    const tablet = await loginDevice(client, alice, { registrationId: 102 });
    expect(tablet.deviceId).toBe(3);
    release();
    await removal;
    const rows = await node.database.db
      .select()
      .from(deviceRemovals)
      .where(eq(deviceRemovals.userId, alice.userId));
    expect(rows).toEqual([]);
    // Finished: the id is free again.
    expect((await loginDevice(client, alice, { registrationId: 103 })).deviceId).toBe(2);
  });

  test("a removal left unfinished (a node died after the delete) is finished by the retention pass", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 201 });
    const waiting = envelopeFor(alice.userId, phone.deviceId, bob.userId);
    const queued = envelopeFor(alice.userId, phone.deviceId, bob.userId);
    expect(await node.log.append([waiting, queued])).toEqual([true, true]);
    await node.offline.flush(alice.userId, phone.deviceId, [queued]);
    await node.log.markQueued(alice.userId, phone.deviceId, [queued]);
    expect(await node.offline.depth(alice.userId, phone.deviceId)).toBe(1);
    try {
      // The node's own listeners never ran: this service has one that fails, as a dead node's would.
      const devices = new DeviceService(node.database.db);
      devices.onRemoved(() => {
        throw new Error("the node died here");
      });
      await expect(devices.remove(alice.userId, phone.deviceId)).rejects.toThrow("the node died here");
      expect((await client.get("/v1/devices", alice.accessToken)).body.devices).toHaveLength(1);
      expect(await node.log.undelivered(alice.userId, { device: phone.deviceId })).toHaveLength(2);
      // A recent removal is left to the node doing it; an old one is finished.
      expect((await node.retention.runOnce()).deviceRemovals).toEqual({ finished: 0, failed: 0 });
      await node.database.db
        .update(deviceRemovals)
        .set({ removedAt: sql`now() - interval '2 minutes'` })
        .where(and(eq(deviceRemovals.userId, alice.userId), eq(deviceRemovals.deviceId, phone.deviceId)));
      expect((await node.retention.runOnce()).deviceRemovals).toEqual({ finished: 1, failed: 0 });
      expect(await node.log.undelivered(alice.userId, { device: phone.deviceId })).toEqual([]);
      expect(await node.offline.depth(alice.userId, phone.deviceId)).toBe(0);
      expect((await node.retention.runOnce()).deviceRemovals).toEqual({ finished: 0, failed: 0 });
      expect((await loginDevice(client, alice, { registrationId: 202 })).deviceId).toBe(phone.deviceId);
    } finally {
      await node.offline.purge(alice.userId, phone.deviceId).catch(() => 0);
    }
  });
  /** A removal whose follow-ups failed once (its node died after the delete), its row made stale. */
  async function leftUnfinished(userId: string, deviceId: number): Promise<void> {
    const dying = new DeviceService(node.database.db);
    dying.onRemoved(() => {
      throw new Error("the node died here");
    });
    await expect(dying.remove(userId, deviceId)).rejects.toThrow("the node died here");
    await node.database.db
      .update(deviceRemovals)
      .set({ removedAt: sql`now() - interval '2 minutes'` })
      .where(and(eq(deviceRemovals.userId, userId), eq(deviceRemovals.deviceId, deviceId)));
  }

  test("of two retention passes finishing one removal at once, one runs it and the id stays taken until it is done", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 301 });
    await leftUnfinished(alice.userId, phone.deviceId);
    // Node A's pass is slow in the follow-ups (the actor's node slow to answer, say).
    const { promise: held, resolve: release } = Promise.withResolvers<void>();
    const { promise: started, resolve: followUpStarted } = Promise.withResolvers<void>();
    const nodeA = new DeviceService(node.database.db);
    nodeA.onRemoved(async () => {
      followUpStarted();
      await held;
    });
    const nodeB = new DeviceService(node.database.db);
    const ranOnB: number[] = [];
    nodeB.onRemoved((_, deviceId) => {
      ranOnB.push(deviceId);
    });
    const passA = nodeA.finishRemovals();
    await started;
    // Before the fix B ran the same follow-ups and freed the id while A's were still running; a
    // login then got the id, and A's late steps (log erase, queue purge, socket close) reached it.
    expect(await nodeB.finishRemovals()).toEqual({ finished: 0, failed: 0 });
    expect(ranOnB).toEqual([]);
    expect((await loginDevice(client, alice, { registrationId: 302 })).deviceId).not.toBe(phone.deviceId);
    release();
    expect(await passA).toEqual({ finished: 1, failed: 0 });
    expect((await loginDevice(client, alice, { registrationId: 303 })).deviceId).toBe(phone.deviceId);
  });

  test("a follow-up that hangs does not hang the retention pass, and keeps the id until it ends", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 401 });
    await leftUnfinished(alice.userId, phone.deviceId);
    const { promise: held, resolve: release } = Promise.withResolvers<void>();
    const { promise: done, resolve: ended } = Promise.withResolvers<void>();
    const hanging = new DeviceService(node.database.db);
    hanging.onRemoved(async () => {
      await held;
    });
    hanging.onRemoved(() => ended());
    // Before the fix this never returned (nor did the retention pass, nor the node's stop).
    expect(await hanging.finishRemovals({ timeoutMs: 100 })).toEqual({ finished: 0, failed: 1 });
    // Claimed just now: the next pass leaves it to the attempt still running.
    expect(await hanging.finishRemovals()).toEqual({ finished: 0, failed: 0 });
    expect((await loginDevice(client, alice, { registrationId: 402 })).deviceId).not.toBe(phone.deviceId);
    // The attempt ends after all and frees the id under its claim.
    release();
    await done;
    let rows = [{}];
    while (rows.length > 0) {
      rows = await node.database.db
        .select()
        .from(deviceRemovals)
        .where(eq(deviceRemovals.userId, alice.userId));
      await Bun.sleep(10);
    }
    expect((await loginDevice(client, alice, { registrationId: 403 })).deviceId).toBe(phone.deviceId);
  });

  test("a removal whose follow-ups fail every time keeps its id and says so: an error line per failed pass with its attempts, and the metrics", async () => {
    const alice = await registerAndLogin(client);
    const phone = await loginDevice(client, alice, { registrationId: 501 });
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const logger = createLogger({ level: "info", nodeId: "test", destination });
    const failing = new DeviceService(node.database.db, undefined, logger);
    failing.onRemoved(() => {
      throw new Error("the queue's broker refuses, every time");
    });
    await expect(failing.remove(alice.userId, phone.deviceId)).rejects.toThrow("every time");
    const row = () =>
      and(eq(deviceRemovals.userId, alice.userId), eq(deviceRemovals.deviceId, phone.deviceId));
    for (const pass of [1, 2]) {
      await node.database.db
        .update(deviceRemovals)
        .set({ removedAt: sql`now() - interval '2 minutes'` })
        .where(row());
      expect(await failing.finishRemovals()).toEqual({ finished: 0, failed: 1 });
      expect(lines).toHaveLength(pass);
    }
    // The removal's own run, then one per pass.
    const [stored] = await node.database.db.select().from(deviceRemovals).where(row());
    expect(stored?.attempts).toBe(3);
    // Before, a failed pass was silent (the error swallowed, nothing counted): the id stayed
    // blocked for ever with nothing telling an operator.
    const logged = lines.map((line) => JSON.parse(line));
    expect(logged.map((l) => [l.level, l.user, l.deviceId, l.attempts])).toEqual([
      [50, alice.userId, phone.deviceId, 2],
      [50, alice.userId, phone.deviceId, 3],
    ]);
    expect(logged[0].err.type).toBe("Error");
    // Never the error's message (it may hold what a driver put in it).
    expect(lines.join("")).not.toContain("every time");
    const stats = await failing.removalStats();
    expect(stats.unfinished).toBeGreaterThanOrEqual(1);
    expect(stats.maxAttempts).toBeGreaterThanOrEqual(3);
    const exposition = await node.metrics.registry.metrics();
    const sample = (name: string) =>
      Number(
        exposition
          .split("\n")
          .find((line) => line.startsWith(`${name}{`))
          ?.split(" ")
          .pop(),
      );
    expect(sample("clearbox_device_removals_unfinished")).toBe(stats.unfinished);
    expect(sample("clearbox_device_removal_attempts_max")).toBe(stats.maxAttempts);
    // The id stays blocked meanwhile.
    expect((await loginDevice(client, alice, { registrationId: 502 })).deviceId).not.toBe(phone.deviceId);
    await node.database.db.delete(deviceRemovals).where(row());
  });
});
