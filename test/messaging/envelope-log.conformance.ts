import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import type { GroupEnvelope } from "../../actors/index.ts";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import type { EnvelopeLog } from "../../src/messaging/envelope-log.ts";

/** A log under test and how to dispose of it. */
export interface LogUnderTest {
  log: EnvelopeLog;
  dispose(): Promise<void>;
  /**
   * Group messages the log holds unexpanded, read beside it (a read through the log would expand
   * them); logs that expand at once have none to count.
   */
  unexpanded?(): Promise<number>;
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

function groupMessage(overrides: Partial<GroupEnvelope> = {}): GroupEnvelope {
  return {
    id: randomUUID(),
    senderUser: randomUUID(),
    senderDevice: 1,
    groupId: randomUUID(),
    ts: Date.now(),
    type: 7,
    body: Buffer.from(`sender key ciphertext-${randomUUID()}`).toString("base64"),
    ...overrides,
  };
}

/** The envelope of `message` for one device, as `undelivered` returns it. */
function copyFor(message: GroupEnvelope, recipientUser: string, recipientDevice: number): StoredEnvelope {
  return { ...message, recipientUser, recipientDevice };
}

/**
 * The behaviour every EnvelopeLog implementation must have; each backend's test file calls this.
 * `open({ expandInBackground: false })` must give a log that leaves group messages unexpanded until
 * something needs their rows (as after a crash right after `accepted`); logs that expand at once
 * (MongoDB) ignore it.
 */
export function describeEnvelopeLog(
  name: string,
  open: (options: { expandInBackground: boolean }) => Promise<LogUnderTest>,
  { expandsAtOnce = false }: { expandsAtOnce?: boolean } = {},
) {
  describe(`EnvelopeLog conformance: ${name}`, () => {
    let subject: LogUnderTest;
    let log: EnvelopeLog;

    beforeAll(async () => {
      subject = await open({ expandInBackground: false });
      log = subject.log;
    });
    afterAll(() => subject?.dispose());

    test("a group message is stored once: a re-send is not new, and every recipient device reads its copy", async () => {
      const [a, b] = [randomUUID(), randomUUID()];
      const message = groupMessage();
      expect(await log.appendGroup(message, { [a]: [1], [b]: [1, 2] })).toBe(true);
      expect(await log.appendGroup({ ...message, ts: message.ts + 5 }, { [a]: [1] })).toBe(false);
      expect(await log.undelivered(a)).toEqual([copyFor(message, a, 1)]);
      expect(await log.undelivered(b)).toEqual([copyFor(message, b, 1), copyFor(message, b, 2)]);
      // Still not new once expanded, and nothing left to sweep.
      expect(await log.appendGroup(message, { [a]: [1] })).toBe(false);
      expect(await log.expandStale(0)).toEqual([]);
      expect(await log.undelivered(a)).toHaveLength(1);
    });

    test("a group message to 10,000 member devices reaches each, once", async () => {
      const recipients: Record<string, number[]> = {};
      const users = Array.from({ length: 5_000 }, () => randomUUID());
      for (const user of users) recipients[user] = [1, 2];
      const message = groupMessage();
      expect(await log.appendGroup(message, recipients)).toBe(true);
      const last = users[4_999] as string;
      expect(await log.undelivered(last)).toEqual([copyFor(message, last, 1), copyFor(message, last, 2)]);
      expect(await log.ack(last, 2, [message])).toBe(1);
      expect(await log.undelivered(last)).toEqual([copyFor(message, last, 1)]);
    }, 30_000);

    test("an ack before the expansion leaves the row acked, and the expansion writes the others pending", async () => {
      const [a, b] = [randomUUID(), randomUUID()];
      const message = groupMessage();
      await log.appendGroup(message, { [a]: [1], [b]: [1] });
      expect(await log.ack(a, 1, [message])).toBe(1);
      expect(await log.ack(a, 1, [message])).toBe(0);
      expect(await log.expandStale(0)).toEqual([]);
      expect(await log.undelivered(a)).toEqual([]);
      expect(await log.undelivered(b)).toEqual([copyFor(message, b, 1)]);
      const [meta] = await log.metadataOf(a);
      expect(meta).toMatchObject({ id: message.id, state: "acked", groupId: message.groupId });
      // A `queued` mark after the ack does not move it back.
      await log.markQueued(a, 1, [message]);
      expect(await log.undelivered(a)).toEqual([]);
    });

    test("a queued mark before the expansion leaves the row queued, and a later ack acks it", async () => {
      const a = randomUUID();
      const message = groupMessage();
      await log.appendGroup(message, { [a]: [1, 2] });
      await log.markQueued(a, 1, [message]);
      expect(await log.undelivered(a, { state: "queued" })).toEqual([copyFor(message, a, 1)]);
      expect(await log.undelivered(a, { state: "pending" })).toEqual([copyFor(message, a, 2)]);
      expect(await log.ack(a, 1, [message])).toBe(1);
      await log.markQueued(a, 1, [message]);
      expect(await log.undelivered(a, { device: 1 })).toEqual([]);
    });

    test("group messages keep their order per recipient device whichever is expanded first", async () => {
      const [a, b] = [randomUUID(), randomUUID()];
      const groupId = randomUUID();
      const messages = [1, 2, 3].map((n) => groupMessage({ groupId, ts: 1_000 + n }));
      for (const message of messages) await log.appendGroup(message, { [a]: [1], [b]: [1] });
      // A's ack of the last one comes first: B's copies must still come back oldest first.
      await log.ack(a, 1, [messages[2] as GroupEnvelope]);
      expect((await log.undelivered(b)).map((e) => e.id)).toEqual(messages.map((m) => m.id));
      expect((await log.undelivered(a)).map((e) => e.id)).toEqual(messages.slice(0, 2).map((m) => m.id));
    });

    test.skipIf(expandsAtOnce)(
      "the sweep's expansion reports each device it wrote a row for, once",
      async () => {
        const [a, b] = [randomUUID(), randomUUID()];
        const message = groupMessage({ ts: Date.now() - 60_000 });
        await log.appendGroup(message, { [a]: [1], [b]: [3, 4] });
        await log.ack(b, 3, [message]);
        // The ack expanded it already: nothing left for the sweep.
        expect(await log.expandStale(10_000)).toEqual([]);
        const later = groupMessage({ ts: Date.now() - 60_000 });
        await log.appendGroup(later, { [a]: [1], [b]: [3, 4] });
        const recent = groupMessage();
        await log.appendGroup(recent, { [a]: [2] });
        const swept = await log.expandStale(10_000);
        const mine = swept.filter((x) => x.envelope.id === later.id || x.envelope.id === recent.id);
        expect(mine[0]?.envelope).toEqual(later);
        expect(mine[0]?.devices).toEqual({ [a]: [1], [b]: [3, 4] });
        expect(await log.expandStale(10_000)).toEqual([]);
        expect((await log.undelivered(a)).map((e) => e.id)).toContain(later.id);
      },
    );

    test("erasing a group sender with an expansion pending leaves nothing of theirs, now or after", async () => {
      const sender = randomUUID();
      const [a, b] = [randomUUID(), randomUUID()];
      const message = groupMessage({ senderUser: sender });
      const other = groupMessage();
      await log.appendGroup(message, { [a]: [1], [b]: [1] });
      await log.appendGroup(other, { [a]: [1] });
      expect(await log.eraseUser(sender)).toBeGreaterThanOrEqual(1);
      expect((await log.expandStale(0)).some((x) => x.envelope.senderUser === sender)).toBe(false);
      expect(await log.metadataOf(sender)).toEqual([]);
      expect((await log.undelivered(a)).map((e) => e.id)).toEqual([other.id]);
      expect(await log.undelivered(b)).toEqual([]);
      // The erased sender's id is no longer known: the log holds nothing of theirs.
      expect(await log.appendGroup(message, { [a]: [1] })).toBe(true);
      await log.eraseUser(sender);
    });

    test("erasing a group recipient with an expansion pending writes no row for them afterwards", async () => {
      const [erased, other] = [randomUUID(), randomUUID()];
      const message = groupMessage();
      await log.appendGroup(message, { [erased]: [1, 2], [other]: [1] });
      await log.eraseUser(erased);
      expect(await log.undelivered(other)).toEqual([copyFor(message, other, 1)]);
      expect(await log.metadataOf(erased)).toEqual([]);
      expect(await log.undelivered(erased)).toEqual([]);
      expect((await log.metadataOf(message.senderUser)).map((m) => m.recipientUser)).toEqual([other]);
    });

    test("removing a device with an expansion pending writes no row for it", async () => {
      const a = randomUUID();
      const message = groupMessage();
      await log.appendGroup(message, { [a]: [1, 2] });
      await log.eraseDevice(a, 2);
      expect(await log.undelivered(a)).toEqual([copyFor(message, a, 1)]);
    });

    test("retention removes group messages not expanded yet along with envelopes", async () => {
      const a = randomUUID();
      const old = groupMessage({ ts: 1_000 });
      const fresh = groupMessage();
      await log.appendGroup(old, { [a]: [1] });
      await log.appendGroup(fresh, { [a]: [1] });
      expect(await log.purgeBefore(2_000)).toBeGreaterThanOrEqual(1);
      expect((await log.undelivered(a)).map((e) => e.id)).toEqual([fresh.id]);
      expect(await log.metadataOf(old.senderUser)).toEqual([]);
    });

    test.skipIf(expandsAtOnce)("the background expansion writes every row without being asked", async () => {
      const eager = await open({ expandInBackground: true });
      try {
        const a = randomUUID();
        const message = groupMessage({ ts: Date.now() - 60_000 });
        await eager.log.appendGroup(message, { [a]: [1, 2] });
        // Once expanded in the background (waited for as it happens, not a fixed two seconds a
        // loaded machine may overrun), the sweep finds nothing left to write.
        const unexpanded = eager.unexpanded;
        if (!unexpanded) throw new Error(`${name}: a log that expands in the background needs unexpanded()`);
        const deadline = Date.now() + 15_000;
        while ((await unexpanded()) > 0 && Date.now() < deadline) await Bun.sleep(20);
        expect(await unexpanded()).toBe(0);
        expect(await eager.log.expandStale(10_000)).toEqual([]);
        expect(await eager.log.undelivered(a)).toEqual([copyFor(message, a, 1), copyFor(message, a, 2)]);
      } finally {
        await eager.dispose();
      }
    });

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

    // The identity leads with the recipient (PostgreSQL primary key, SQLite unique index) but still
    // names the sender: another sender, or another device of the same sender, picking the same id
    // for the same recipient device is a new envelope, not a re-send that would be dropped.
    test("the same id for the same recipient device from another sender or sender device is new; each re-send is not", async () => {
      const first = envelope();
      const otherSender = { ...first, senderUser: randomUUID() };
      const otherDevice = { ...first, senderDevice: 2 };
      expect(await log.append([first, otherSender, otherDevice])).toEqual([true, true, true]);
      expect(await log.append([first, otherSender, otherDevice])).toEqual([false, false, false]);
      const stored = await log.undelivered(first.recipientUser);
      expect(stored.map((e) => `${e.senderUser}/${e.senderDevice}`).sort()).toEqual(
        [first, otherSender, otherDevice].map((e) => `${e.senderUser}/${e.senderDevice}`).sort(),
      );
      expect(new Set(stored.map((e) => e.body))).toEqual(new Set([first.body]));
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
      await log.markQueued(recipientUser, 2, [b]);
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
      await Promise.all(held.map(([a]) => log.ack(a?.recipientUser as string, 1, [a as StoredEnvelope])));
      await Promise.all(
        held.map(([a, b]) =>
          log.markQueued(b?.recipientUser as string, 1, [a as StoredEnvelope, b as StoredEnvelope]),
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
      expect(await log.ack(e.recipientUser, e.recipientDevice, [e])).toBe(1);
      expect(await log.ack(e.recipientUser, e.recipientDevice, [e])).toBe(0);
      expect(await log.undelivered(e.recipientUser)).toEqual([]);
      const [meta] = await log.metadataOf(e.recipientUser);
      expect(meta).toMatchObject({ id: e.id, state: "acked", senderUser: e.senderUser });
      expect(JSON.stringify(meta)).not.toContain(e.body);
    });

    test("another device's ack does not acknowledge this device's copy", async () => {
      const e = envelope({ recipientDevice: 1 });
      const twin = { ...e, recipientDevice: 2 };
      await log.append([e, twin]);
      await log.ack(e.recipientUser, 2, [e]);
      expect((await log.undelivered(e.recipientUser)).map((x) => x.recipientDevice)).toEqual([1]);
    });

    test("an ack naming another user's envelope ids, on any device id, acknowledges nothing of theirs", async () => {
      const e = envelope({ recipientDevice: 3 });
      await log.append([e]);
      const stranger = randomUUID();
      expect(await log.ack(stranger, 3, [e])).toBe(0);
      expect(await log.ack(e.senderUser, e.senderDevice, [e])).toBe(0);
      expect((await log.undelivered(e.recipientUser)).map((x) => x.body)).toEqual([e.body]);
    });

    // Ids are chosen by senders (docs/PROTOCOL.md): one who learned another sender's id (a group
    // message both received) can send the same recipient device a message with it. Acks and
    // `queued` marks name an envelope by id and sender device, so neither reaches the other's.
    test("an ack names one envelope by id and sender device: the same id from another sender or sender device stays unacked", async () => {
      const first = envelope();
      const otherSender = {
        ...first,
        senderUser: randomUUID(),
        body: Buffer.from("other").toString("base64"),
      };
      const otherDevice = { ...first, senderDevice: 2, body: Buffer.from("device 2").toString("base64") };
      await log.append([first, otherSender, otherDevice]);
      expect(await log.ack(first.recipientUser, 1, [otherSender])).toBe(1);
      expect(await log.undelivered(first.recipientUser)).toEqual([first, otherDevice]);
      expect(await log.ack(first.recipientUser, 1, [first])).toBe(1);
      expect(await log.undelivered(first.recipientUser)).toEqual([otherDevice]);
      // An ack naming the id with a sender that never sent it acknowledges nothing.
      expect(await log.ack(first.recipientUser, 1, [{ ...first, senderUser: randomUUID() }])).toBe(0);
      expect(await log.undelivered(first.recipientUser)).toEqual([otherDevice]);
    });

    test("a queued mark names one envelope by id and sender device: the same id from another sender stays pending", async () => {
      const first = envelope();
      const otherSender = { ...first, senderUser: randomUUID() };
      await log.append([first, otherSender]);
      await log.markQueued(first.recipientUser, 1, [first]);
      expect(await log.undelivered(first.recipientUser, { state: "queued" })).toEqual([first]);
      expect(await log.undelivered(first.recipientUser, { state: "pending" })).toEqual([otherSender]);
    });

    test("a group message and another sender's 1:1 envelope with its id: acking one leaves the other", async () => {
      const bob = randomUUID();
      const message = groupMessage();
      await log.appendGroup(message, { [bob]: [1] });
      // Not expanded yet (expandInBackground off): the ack must still find only the group's row.
      const copied = envelope({ id: message.id, recipientUser: bob, recipientDevice: 1 });
      await log.append([copied]);
      expect(await log.ack(bob, 1, [copied])).toBe(1);
      expect(await log.undelivered(bob)).toEqual([copyFor(message, bob, 1)]);
      const second = groupMessage();
      await log.appendGroup(second, { [bob]: [1] });
      const decoy = envelope({ id: second.id, recipientUser: bob, recipientDevice: 1 });
      await log.append([decoy]);
      expect(await log.ack(bob, 1, [second])).toBe(1);
      expect(await log.undelivered(bob)).toEqual([copyFor(message, bob, 1), decoy]);
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

    test("undeliveredPage and metadataPage read in keyset pages: all of it once, oldest first, none longer than asked", async () => {
      const user = randomUUID();
      const other = randomUUID();
      const received = Array.from({ length: 7 }, (_, i) =>
        envelope({ recipientUser: user, recipientDevice: 1 + (i % 2), senderUser: other }),
      );
      const sent = Array.from({ length: 3 }, () => envelope({ senderUser: user, recipientUser: other }));
      for (const [i, e] of [...received, ...sent].entries()) {
        await log.append([e]);
        if (i === 1) await log.append([envelope(), envelope({ recipientUser: other })]);
      }
      const acked = received[2] as StoredEnvelope;
      expect(await log.ack(user, acked.recipientDevice, [acked])).toBe(1);
      const readAll = async <T>(
        read: (after: number | null) => Promise<{ rows: T[]; next: number | null }>,
      ): Promise<T[][]> => {
        const pages: T[][] = [];
        let after: number | null = null;
        do {
          const page: { rows: T[]; next: number | null } = await read(after);
          pages.push(page.rows);
          after = page.next;
        } while (after !== null);
        return pages;
      };
      const queued = await readAll((after) => log.undeliveredPage(user, after, 2));
      expect(queued.map((page) => page.length)).toEqual([2, 2, 2, 0]);
      expect(queued.flat()).toEqual(await log.undelivered(user));
      expect(queued.flat().map((e) => e.id)).toEqual(received.filter((e) => e !== acked).map((e) => e.id));
      const metadata = await readAll((after) => log.metadataPage(user, after, 3));
      expect(metadata.map((page) => page.length)).toEqual([3, 3, 3, 1]);
      expect(metadata.flat()).toEqual(await log.metadataOf(user));
      expect(metadata.flat().map((m) => m.id)).toEqual([...received, ...sent].map((e) => e.id));
      expect(metadata.flat().every((m) => !("body" in m))).toBe(true);
      expect(await log.undeliveredPage(randomUUID(), null, 5)).toEqual({ rows: [], next: null });
    });

    test("queuedAfter reads one device's queued rows after a cursor; queuedKeys names those at or before one, without ciphertext", async () => {
      const user = randomUUID();
      const rows = Array.from({ length: 6 }, () => envelope({ recipientUser: user, recipientDevice: 1 }));
      const otherDevice = envelope({ recipientUser: user, recipientDevice: 2 });
      await log.append([...rows, otherDevice]);
      const [r0, r1, r2, r3, r4, r5] = rows as [StoredEnvelope, ...StoredEnvelope[]] & StoredEnvelope[];
      // r1 stays pending (queued late below), r3 is acked: neither is in the queue.
      await log.markQueued(user, 1, [r0, r2, r3, r4, r5] as StoredEnvelope[]);
      await log.markQueued(user, 2, [otherDevice]);
      await log.ack(user, 1, [r3 as StoredEnvelope]);
      const first = await log.queuedAfter(user, 1, null, 2);
      expect(first.map((r) => r.envelope)).toEqual([r0, r2] as StoredEnvelope[]);
      const rest = await log.queuedAfter(user, 1, first.at(-1)?.cursor ?? null, 10);
      expect(rest.map((r) => r.envelope.id)).toEqual([r4?.id, r5?.id]);
      const cursors = [...first, ...rest].map((r) => r.cursor);
      expect([...cursors].sort((a, b) => a - b)).toEqual(cursors);
      expect(new Set(cursors).size).toBe(4);
      expect(await log.queuedAfter(user, 1, rest.at(-1)?.cursor ?? null, 10)).toEqual([]);
      // r1 queued late keeps its place: behind r2's cursor, found by queuedKeys, read by the cursor before it.
      await log.markQueued(user, 1, [r1 as StoredEnvelope]);
      const through = first[1]?.cursor as number;
      const keys = await log.queuedKeys(user, 1, through);
      expect(keys.map(({ id, senderUser, senderDevice }) => ({ id, senderUser, senderDevice }))).toEqual(
        [r0, r1, r2].map((e) => ({ id: e?.id, senderUser: e?.senderUser, senderDevice: e?.senderDevice })),
      );
      expect(keys.every((k) => !("body" in k))).toBe(true);
      expect(keys[2]?.cursor).toBe(through);
      expect((await log.queuedAfter(user, 1, keys[0]?.cursor ?? null, 1)).map((r) => r.envelope)).toEqual([
        r1 as StoredEnvelope,
      ]);
      expect(await log.queuedKeys(user, 3, Number.MAX_SAFE_INTEGER)).toEqual([]);
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
