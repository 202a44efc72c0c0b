import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import type { EnvelopeLog } from "../../src/messaging/envelope-log.ts";

/** A log under test and how to dispose of it. */
export interface LogUnderTest {
  log: EnvelopeLog;
  dispose(): Promise<void>;
}

function envelope(overrides: Partial<StoredEnvelope> = {}): StoredEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    recipientUser: randomUUID(),
    recipientDevice: 1,
    groupId: null,
    ts: Date.now(),
    type: 3,
    body: Buffer.from(`ciphertext-${randomUUID()}`).toString("base64"),
    ...overrides,
  };
}

/** The behaviour every EnvelopeLog implementation must have; each backend's test file calls this. */
export function describeEnvelopeLog(name: string, open: () => Promise<LogUnderTest>) {
  describe(`EnvelopeLog conformance: ${name}`, () => {
    let subject: LogUnderTest;
    let log: EnvelopeLog;

    beforeAll(async () => {
      subject = await open();
      log = subject.log;
    });
    afterAll(() => subject?.dispose());

    test("appended envelopes come back undelivered, oldest first, with their ciphertext intact", async () => {
      const recipientUser = randomUUID();
      const batch = [1, 2, 3].map((n) => envelope({ recipientUser, ts: 1000 + n }));
      expect(await log.append(batch)).toEqual([true, true, true]);
      const later = envelope({ recipientUser });
      await log.append([later]);
      const back = await log.undelivered(recipientUser);
      expect(back.map((e) => e.id)).toEqual([...batch, later].map((e) => e.id));
      expect(back[0]).toEqual(batch[0]);
    });

    test("appending the same sender device, id and recipient device again is reported as not new and stored once", async () => {
      const first = envelope();
      expect(await log.append([first])).toEqual([true]);
      expect(await log.append([{ ...first, ts: first.ts + 5 }])).toEqual([false]);
      const other = { ...first, recipientDevice: 2 };
      expect(await log.append([other, other])).toEqual([true, false]);
      expect(await log.undelivered(first.recipientUser)).toHaveLength(2);
    });

    test("a group send to 10,000 member devices is one append: all new, in order, and idempotent", async () => {
      const message = envelope({ groupId: randomUUID(), type: 7 });
      const members = Array.from({ length: 10_000 }, (_, i) => ({
        ...message,
        recipientUser: randomUUID(),
        recipientDevice: 1 + (i % 127),
      }));
      const fresh = await log.append(members);
      expect(fresh.every((f) => f)).toBe(true);
      expect(fresh).toHaveLength(10_000);
      const last = members[9_999] as StoredEnvelope;
      expect(await log.undelivered(last.recipientUser)).toEqual([last]);
      expect((await log.append(members.slice(0, 3))).some((f) => f)).toBe(false);
    }, 30_000);

    test("concurrent appends from many callers all commit and keep each caller's order", async () => {
      const recipientUser = randomUUID();
      const senders = Array.from({ length: 20 }, () => randomUUID());
      await Promise.all(
        senders.map(async (senderUser) => {
          for (let i = 0; i < 10; i++) {
            await log.append([
              envelope({ recipientUser, senderUser, ts: i, body: Buffer.from(String(i)).toString("base64") }),
            ]);
          }
        }),
      );
      const back = await log.undelivered(recipientUser);
      expect(back).toHaveLength(200);
      for (const sender of senders) {
        const order = back.filter((e) => e.senderUser === sender).map((e) => e.ts);
        expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      }
    });

    test("undelivered filters by device and state, and honours the limit", async () => {
      const recipientUser = randomUUID();
      const a = envelope({ recipientUser, recipientDevice: 1 });
      const b = envelope({ recipientUser, recipientDevice: 2 });
      const c = envelope({ recipientUser, recipientDevice: 2 });
      await log.append([a, b, c]);
      await log.markQueued(recipientUser, 2, [b.id]);
      expect((await log.undelivered(recipientUser, { device: 2 })).map((e) => e.id)).toEqual([b.id, c.id]);
      expect((await log.undelivered(recipientUser, { state: "queued" })).map((e) => e.id)).toEqual([b.id]);
      expect((await log.undelivered(recipientUser, { state: "pending" })).map((e) => e.id)).toEqual([
        a.id,
        c.id,
      ]);
      expect(await log.undelivered(recipientUser, { limit: 1 })).toHaveLength(1);
    });

    test("many devices marked queued at once each get exactly their envelopes queued; acked ones stay acked", async () => {
      const recipients = Array.from({ length: 50 }, () => randomUUID());
      const held = recipients.map((recipientUser) => [
        envelope({ recipientUser }),
        envelope({ recipientUser }),
        envelope({ recipientUser }),
      ]);
      await log.append(held.flat());
      // The first of each is acked, the second flushed to the offline queue, the third left pending.
      await Promise.all(held.map(([a]) => log.ack(a?.recipientUser as string, 1, [a?.id as string])));
      await Promise.all(
        held.map(([a, b]) =>
          log.markQueued(b?.recipientUser as string, 1, [a?.id as string, b?.id as string]),
        ),
      );
      for (const [a, b, c] of held) {
        const user = a?.recipientUser as string;
        expect((await log.undelivered(user, { state: "queued" })).map((e) => e.id)).toEqual([
          b?.id as string,
        ]);
        expect((await log.undelivered(user, { state: "pending" })).map((e) => e.id)).toEqual([
          c?.id as string,
        ]);
      }
    });

    test("ack drops the ciphertext, removes the envelope from undelivered, and counts only new acks", async () => {
      const e = envelope();
      await log.append([e]);
      expect(await log.ack(e.recipientUser, e.recipientDevice, [e.id])).toBe(1);
      expect(await log.ack(e.recipientUser, e.recipientDevice, [e.id])).toBe(0);
      expect(await log.undelivered(e.recipientUser)).toEqual([]);
      const [meta] = await log.metadataOf(e.recipientUser);
      expect(meta).toMatchObject({ id: e.id, state: "acked", senderUser: e.senderUser });
      expect(JSON.stringify(meta)).not.toContain(e.body);
    });

    test("another device's ack does not acknowledge this device's copy", async () => {
      const e = envelope({ recipientDevice: 1 });
      const twin = { ...e, recipientDevice: 2 };
      await log.append([e, twin]);
      await log.ack(e.recipientUser, 2, [e.id]);
      expect((await log.undelivered(e.recipientUser)).map((x) => x.recipientDevice)).toEqual([1]);
    });

    test("metadataOf lists envelopes sent by and to the user, without ciphertext", async () => {
      const user = randomUUID();
      const sent = envelope({ senderUser: user });
      const received = envelope({ recipientUser: user });
      await log.append([sent, received, envelope()]);
      const meta = await log.metadataOf(user);
      expect(meta.map((m) => m.id).sort()).toEqual([sent.id, received.id].sort());
      expect(meta.every((m) => !("body" in m))).toBe(true);
    });

    test("eraseUser removes what the user sent and received, and nothing of others", async () => {
      const user = randomUUID();
      const bystander = envelope();
      await log.append([envelope({ senderUser: user }), envelope({ recipientUser: user }), bystander]);
      expect(await log.eraseUser(user)).toBe(2);
      expect(await log.metadataOf(user)).toEqual([]);
      expect(await log.undelivered(bystander.recipientUser)).toHaveLength(1);
      expect(await log.eraseUser(user)).toBe(0);
    });

    test("eraseDevice removes only that device's envelopes", async () => {
      const e = envelope({ recipientDevice: 1 });
      await log.append([e, { ...e, recipientDevice: 2 }]);
      expect(await log.eraseDevice(e.recipientUser, 2)).toBe(1);
      expect((await log.undelivered(e.recipientUser)).map((x) => x.recipientDevice)).toEqual([1]);
    });

    test("purgeBefore removes envelopes accepted before the cut-off and keeps newer ones", async () => {
      const recipientUser = randomUUID();
      const old = envelope({ recipientUser, ts: 1_000 });
      const fresh = envelope({ recipientUser, ts: Date.now() });
      await log.append([old, fresh]);
      expect(await log.purgeBefore(2_000)).toBeGreaterThanOrEqual(1);
      expect((await log.undelivered(recipientUser)).map((e) => e.id)).toEqual([fresh.id]);
    });
  });
}
