import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type ActorSystem, createActorNode, GROUP_KIND, USER_KIND } from "../../actors/index.ts";
import { type Database, openDatabase } from "../../src/db/index.ts";
import { accounts, devices } from "../../src/db/schema.ts";
import { MessagingService, type SendOutcome } from "../../src/messaging/service.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";

/**
 * Flow control against the real stores (PGlite, the SQLite log) and a real in-memory actor node
 * whose user and group actors wait on a gate the test opens: that is a recipient falling behind.
 */
describe("flow control of sends", () => {
  let database: Database;
  let log: SqliteEnvelopeLog;
  let actors: ActorSystem;
  let messaging: MessagingService;
  let gate: { open: () => void; opened: Promise<void> };
  const delivered: string[] = [];
  const sender = { userId: randomUUID(), deviceId: 1 };
  const recipient = randomUUID();

  const newGate = () => {
    let open = () => {};
    const opened = new Promise<void>((resolve) => {
      open = resolve;
    });
    gate = { open, opened };
  };

  beforeAll(async () => {
    newGate();
    database = await openDatabase({ dataDir: null });
    for (const id of [sender.userId, recipient]) {
      await database.db.insert(accounts).values({ id, username: `u${id}`, passwordHash: "x" });
      await database.db.insert(devices).values({ userId: id, deviceId: 1, registrationId: 1 });
    }
    log = await SqliteEnvelopeLog.open(null);
    actors = createActorNode({ nodeId: "solo", mailboxCapacity: 1 });
    actors.register(USER_KIND, () => ({
      async receive(message: { type: string; envelopes?: { id: string }[] }) {
        await gate.opened;
        for (const e of message.envelopes ?? []) delivered.push(e.id);
        return { devices: 1 };
      },
    }));
    actors.register(GROUP_KIND, () => ({
      async receive() {
        await gate.opened;
        return { ok: true, ts: 1, recipients: 0 };
      },
    }));
    await actors.start();
    messaging = new MessagingService(database.db, log, actors, Date.now, {
      window: 2,
      retryAfterMs: 40,
      acceptWaitMs: 10_000,
      handOverTimeoutMs: 10_000,
    });
  });
  afterAll(async () => {
    gate.open();
    await actors?.stop();
    await log?.close();
    await database?.close();
  });

  const send = (id: string) =>
    messaging.submitDirect(sender, {
      type: "send",
      id,
      to: { user: recipient },
      messages: [{ deviceId: 1, type: 3 as const, body: Buffer.from(id).toString("base64") }],
    });

  test("accepted waits for the recipient's actor; past the window a send is busy, nothing stored, and the same id goes through later", async () => {
    const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
    const answers: SendOutcome[] = [];
    const first = (await send(a)).outcome.then((o) => answers.push(o));
    const second = (await send(b)).outcome.then((o) => answers.push(o));
    // Both are durable, but their actor has not taken them: no `accepted` yet.
    while (messaging.sendsInFlight < 2) await Bun.sleep(5);
    await Bun.sleep(50);
    expect(answers).toEqual([]);
    expect((await log.undelivered(recipient)).map((e) => e.id)).toEqual([a, b]);

    const refused = await (await send(c)).outcome;
    expect(refused).toEqual({ type: "rejected", id: c, code: "busy", retryAfterMs: 40 });
    expect((await log.undelivered(recipient)).map((e) => e.id)).toEqual([a, b]);
    expect(messaging.busyReplies).toBe(1);

    gate.open();
    await Promise.all([first, second]);
    expect(answers.map((o) => [o.type, o.id])).toEqual([
      ["accepted", a],
      ["accepted", b],
    ]);
    expect(delivered).toEqual([a, b]);
    expect(await (await send(c)).outcome).toMatchObject({ type: "accepted", id: c });
    expect(messaging.sendsInFlight).toBe(0);
  });

  test("a group actor whose mailbox is full answers busy, not an internal error", async () => {
    newGate();
    const group = randomUUID();
    const frame = (id: string) => ({
      type: "send" as const,
      id,
      to: { group },
      message: { type: 7 as const, body: "AAAA" },
    });
    // The first is being handled (waiting on the gate), the second fills the one-message mailbox.
    const running = messaging.sendGroup(sender, frame(randomUUID()));
    await Bun.sleep(20);
    const queued = actors.ask(`group:${group}`, { type: "send" });
    const third = randomUUID();
    expect(await messaging.sendGroup(sender, frame(third))).toEqual({
      type: "rejected",
      id: third,
      code: "busy",
      retryAfterMs: 40,
    });
    gate.open();
    expect(await running).toMatchObject({ type: "accepted" });
    await queued;
  });
});

describe("flow control when the recipient's actor is slow to answer", () => {
  test("accepted comes after acceptWaitMs, and the hand-over keeps counting in the window until it settles", async () => {
    const database = await openDatabase({ dataDir: null });
    const log = await SqliteEnvelopeLog.open(null);
    const actors = createActorNode({ nodeId: "solo" });
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    actors.register(USER_KIND, () => ({
      async receive() {
        await held;
        return { devices: 1 };
      },
    }));
    await actors.start();
    try {
      const [from, to] = [randomUUID(), randomUUID()];
      for (const id of [from, to]) {
        await database.db.insert(accounts).values({ id, username: `u${id}`, passwordHash: "x" });
        await database.db.insert(devices).values({ userId: id, deviceId: 1, registrationId: 1 });
      }
      const messaging = new MessagingService(database.db, log, actors, Date.now, {
        window: 10,
        retryAfterMs: 25,
        acceptWaitMs: 100,
        handOverTimeoutMs: 10_000,
      });
      const id = randomUUID();
      const { outcome } = await messaging.submitDirect(
        { userId: from, deviceId: 1 },
        { type: "send", id, to: { user: to }, messages: [{ deviceId: 1, type: 3, body: "AAAA" }] },
      );
      expect(await outcome).toMatchObject({ type: "accepted", id });
      expect(messaging.sendsInFlight).toBe(1);
      release();
      while (messaging.sendsInFlight > 0) await Bun.sleep(5);
    } finally {
      release();
      await actors.stop();
      await log.close();
      await database.close();
    }
  });
});
