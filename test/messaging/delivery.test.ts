import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin, relate } from "../support/http.ts";
import { type Backend, socketState, startTestNode, type TestNode } from "../support/node.ts";
import { ackOf, messagesBeforeMarker, TestSocket, waitUntil } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** A 1:1 send frame: one prekey-type ciphertext (here plain text in base64) per named device. */
function direct(id: string, to: string, bodies: Record<number, string>) {
  const messages = Object.entries(bodies).map(([deviceId, text]) => ({
    deviceId: Number(deviceId),
    type: 3,
    body: b64(text),
  }));
  return { type: "send", id, to: { user: to }, messages };
}

describe.each(STACKS)("1:1 delivery on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** An account with `devices` logged-in devices. */
  async function user(devices = 1) {
    const first = await registerAndLogin(client);
    const sessions = [first];
    for (let i = 1; i < devices; i++) {
      const more = await client.post("/v1/sessions", {
        username: first.username,
        password: first.password,
        registrationId: 100 + i,
      });
      sessions.push({ ...first, ...more.body });
    }
    return { userId: first.userId, sessions };
  }

  const connect = (token: string) => TestSocket.open(node.url, token);

  test("a send to every device of an online user is accepted and reaches each device once", async () => {
    const alice = await user();
    const bob = await user(2);
    const [b1, b2] = await Promise.all(bob.sessions.map((s) => connect(s.accessToken)));
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, { 1: "for device 1", 2: "for device 2" }));
    const accepted = await a.reply(id);
    expect(accepted).toMatchObject({ type: "accepted", id });
    expect(typeof accepted.ts).toBe("number");
    const [m1] = await b1.messages(1);
    const [m2] = await b2.messages(1);
    expect(m1).toEqual({
      type: "message",
      id,
      from: { user: alice.userId, device: 1 },
      ts: accepted.ts,
      envelope: { type: 3, body: b64("for device 1") },
    });
    expect(m2.envelope.body).toBe(b64("for device 2"));
    b1.send(ackOf([m1]));
    b2.send(ackOf([m2]));
    // Once each: nothing came before a later message to both devices.
    expect(await messagesBeforeMarker(a, bob.userId, [b1, b2])).toEqual([[], []]);
    await Promise.all([a.close(), b1.close(), b2.close()]);
  });

  test("a device list that does not match the recipient's devices is rejected with missing and extra", async () => {
    const alice = await user();
    const bob = await user(2);
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, { 1: "x", 5: "x" }));
    expect(await a.reply(id)).toEqual({
      type: "rejected",
      id,
      code: "mismatched_devices",
      missing: [2],
      extra: [5],
    });
    await a.close();
  });

  test("a device the recipient adds is required at once, though the sender's last send cached the list", async () => {
    const alice = await user();
    const bob = await user();
    const a = await connect(alice.sessions[0].accessToken);
    const first = randomUUID();
    a.send(direct(first, bob.userId, { 1: "one device" }));
    expect((await a.reply(first)).type).toBe("accepted");
    const more = await client.post("/v1/sessions", {
      username: bob.sessions[0].username,
      password: bob.sessions[0].password,
      registrationId: 77,
    });
    expect(more.body.deviceId).toBe(2);
    const second = randomUUID();
    a.send(direct(second, bob.userId, { 1: "still one device?" }));
    expect(await a.reply(second)).toEqual({
      type: "rejected",
      id: second,
      code: "mismatched_devices",
      missing: [2],
      extra: [],
    });
    await a.close();
  });

  test("a send to a user that does not exist is rejected as unknown_recipient", async () => {
    const alice = await user();
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    a.send({
      type: "send",
      id,
      to: { user: randomUUID() },
      messages: [{ deviceId: 1, type: 3, body: b64("x") }],
    });
    expect(await a.reply(id)).toMatchObject({ type: "rejected", id, code: "unknown_recipient" });
    await a.close();
  });

  test("re-sending the same id is accepted again and delivered once", async () => {
    const alice = await user();
    const bob = await user();
    const b = await connect(bob.sessions[0].accessToken);
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    const frame = direct(id, bob.userId, { 1: "once" });
    a.send(frame);
    expect((await a.reply(id)).type).toBe("accepted");
    a.send(frame);
    expect((await a.reply(id)).type).toBe("accepted");
    const [m] = await b.messages(1);
    expect(m.id).toBe(id);
    expect(await messagesBeforeMarker(a, bob.userId, [b])).toEqual([[]]);
    await Promise.all([a.close(), b.close()]);
  });

  // Ids are chosen by senders: Mallory, who learned the id of Alice's message to Bob (a group
  // message all three received), sends Bob her own message with it. Each must reach Bob, and
  // Bob's ack of one must not acknowledge the other (docs/PROTOCOL.md, `ack`).
  test("another sender's message with the same id neither hides a live message nor is acked with it", async () => {
    const [alice, bob, mallory] = [await user(), await user(), await user()];
    const b = await connect(bob.sessions[0].accessToken);
    const a = await connect(alice.sessions[0].accessToken);
    const m = await connect(mallory.sessions[0].accessToken);
    const id = randomUUID();
    m.send(direct(id, bob.userId, { 1: "from mallory" }));
    expect((await m.reply(id)).type).toBe("accepted");
    const [fromMallory] = await b.messages(1);
    a.send(direct(id, bob.userId, { 1: "from alice" }));
    expect((await a.reply(id)).type).toBe("accepted");
    const [fromAlice] = await b.messages(1, 10_000);
    expect(fromAlice).toMatchObject({
      id,
      from: { user: alice.userId, device: 1 },
      envelope: { body: b64("from alice") },
    });
    // Bob has Mallory's only: his ack names hers, and Alice's comes again on his next connection.
    b.send(ackOf([fromMallory]));
    await b.close();
    const again = await connect(bob.sessions[0].accessToken);
    const [redelivered] = await again.messages(1, 10_000);
    expect(redelivered).toMatchObject({
      id,
      from: { user: alice.userId },
      envelope: { body: b64("from alice") },
    });
    again.send(ackOf([redelivered]));
    expect(await messagesBeforeMarker(a, bob.userId, [again])).toEqual([[]]);
    await Promise.all([a.close(), m.close(), again.close()]);
  });

  test("another sender's message with the same id, queued first for an offline device, does not hide the other", async () => {
    const [alice, bob, mallory] = [await user(), await user(), await user()];
    const a = await connect(alice.sessions[0].accessToken);
    const m = await connect(mallory.sessions[0].accessToken);
    const id = randomUUID();
    m.send(direct(id, bob.userId, { 1: "from mallory" }));
    expect((await m.reply(id)).type).toBe("accepted");
    a.send(direct(id, bob.userId, { 1: "from alice" }));
    expect((await a.reply(id)).type).toBe("accepted");
    const b = await connect(bob.sessions[0].accessToken);
    const got = await b.messages(2, 10_000);
    expect(got.map((f) => [f.from.user, Buffer.from(f.envelope.body, "base64").toString()])).toEqual([
      [mallory.userId, "from mallory"],
      [alice.userId, "from alice"],
    ]);
    b.send(ackOf(got));
    await b.close();
    const again = await connect(bob.sessions[0].accessToken);
    // What is queued comes before a live message: none of the acked ones comes back.
    expect(await messagesBeforeMarker(a, bob.userId, [again])).toEqual([[]]);
    await Promise.all([a.close(), m.close(), again.close()]);
  });

  test("messages for an offline device wait and arrive in order on reconnect, then live ones follow", async () => {
    const alice = await user();
    const bob = await user();
    const a = await connect(alice.sessions[0].accessToken);
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) {
      const id = randomUUID();
      ids.push(id);
      a.send(direct(id, bob.userId, { 1: `m${i}` }));
    }
    for (const id of ids) expect((await a.reply(id)).type).toBe("accepted");
    const b = await connect(bob.sessions[0].accessToken);
    const queued = await b.messages(30);
    expect(queued.map((m) => m.id)).toEqual(ids);
    const live = randomUUID();
    a.send(direct(live, bob.userId, { 1: "live" }));
    const [next] = await b.messages(1);
    expect(next.id).toBe(live);
    b.send(ackOf([...queued, next]));
    await Bun.sleep(300);
    await b.close();
    const again = await connect(bob.sessions[0].accessToken);
    expect(await messagesBeforeMarker(a, bob.userId, [again])).toEqual([[]]);
    await Promise.all([a.close(), again.close()]);
  });

  test("a burst for an offline device reaches its offline queue whole, and arrives in order", async () => {
    const alice = await user();
    const bob = await user();
    const a = await connect(alice.sessions[0].accessToken);
    // Bob's actor starts with the first of these, so they arrive during its recovery window and
    // are flushed in batches behind the delivers waiting in its mailbox.
    const ids = Array.from({ length: 150 }, () => randomUUID());
    for (const [i, id] of ids.entries()) a.send(direct(id, bob.userId, { 1: `burst ${i}` }));
    for (const id of ids) expect((await a.reply(id)).type).toBe("accepted");
    const deadline = Date.now() + 10_000;
    while ((await node.offline.depth(bob.userId, 1)) < ids.length && Date.now() < deadline) {
      await Bun.sleep(50);
    }
    expect(await node.offline.depth(bob.userId, 1)).toBe(ids.length);
    const b = await connect(bob.sessions[0].accessToken);
    const got = await b.messages(ids.length);
    expect(got.map((m) => m.id)).toEqual(ids);
    expect(got.map((m) => Buffer.from(m.envelope.body, "base64").toString())).toEqual(
      ids.map((_, i) => `burst ${i}`),
    );
    await Promise.all([a.close(), b.close()]);
  });

  test("what a device did not ack before disconnecting is delivered again on reconnect", async () => {
    const alice = await user();
    const bob = await user();
    const b = await connect(bob.sessions[0].accessToken);
    const a = await connect(alice.sessions[0].accessToken);
    const ids = [randomUUID(), randomUUID(), randomUUID()];
    for (const id of ids) {
      a.send(direct(id, bob.userId, { 1: id }));
      await a.reply(id);
    }
    const got = await b.messages(3);
    expect(got.map((m) => m.id)).toEqual(ids);
    b.send(ackOf(got.slice(0, 1)));
    await Bun.sleep(200);
    await b.close();
    const again = await connect(bob.sessions[0].accessToken);
    const redelivered = await again.messages(2);
    expect(redelivered.map((m) => m.id)).toEqual(ids.slice(1));
    await Promise.all([a.close(), again.close()]);
  });

  test("acks sent just before closing count: nothing acked comes back on the next connection", async () => {
    const alice = await user();
    const bob = await user();
    const b = await connect(bob.sessions[0].accessToken);
    const a = await connect(alice.sessions[0].accessToken);
    // Past the actor's post-activation recovery window (9 heartbeats of 250 ms here), in which
    // every deliver re-reads the log and an ack can trail the deliveries queued before it. Counted
    // from the socket going live (the actor was activated by then), not from the upgrade: on a
    // loaded machine the activation can come well after it.
    await waitUntil(() => socketState(node, bob.userId) === "live", "Bob's socket live");
    await Bun.sleep(2500);
    const ids = Array.from({ length: 20 }, () => randomUUID());
    for (const id of ids) a.send(direct(id, bob.userId, { 1: id }));
    for (const id of ids) await a.reply(id);
    const got = await b.messages(20);
    expect(got.map((m) => m.id)).toEqual(ids);
    // The ack and the close leave together, as a client that acks on its way out does.
    b.send(ackOf(got));
    await b.close();
    const again = await connect(bob.sessions[0].accessToken);
    // Queued envelopes are delivered before live ones: if any acked one came back, it would be first.
    const later = randomUUID();
    a.send(direct(later, bob.userId, { 1: "after the reconnect" }));
    await a.reply(later);
    const [first] = await again.messages(1);
    expect(first?.id).toBe(later);
    await Promise.all([a.close(), again.close()]);
  });

  test("a send to one's own other devices names them without the sending device", async () => {
    const alice = await user(2);
    const [d1, d2] = await Promise.all(alice.sessions.map((s) => connect(s.accessToken)));
    const id = randomUUID();
    d1.send(direct(id, alice.userId, { 2: "sync" }));
    expect((await d1.reply(id)).type).toBe("accepted");
    const [m] = await d2.messages(1);
    expect(m.from).toEqual({ user: alice.userId, device: 1 });
    await Promise.all([d1.close(), d2.close()]);
  });

  test("device lists are checked exactly: the sending device, a device twice, one missing or one extra are refused", async () => {
    const alice = await user(3);
    const bob = await user(2);
    const a = await connect(alice.sessions[0].accessToken);
    const send = async (to: string, messages: { deviceId: number; type: number; body: string }[]) => {
      const id = randomUUID();
      a.send({ type: "send", id, to: { user: to }, messages });
      return a.reply(id);
    };
    const m = (deviceId: number) => ({ deviceId, type: 3, body: b64("x") });
    // To one's own devices: the sending one (1) is not expected.
    expect(await send(alice.userId, [m(1), m(2), m(3)])).toMatchObject({
      type: "rejected",
      code: "mismatched_devices",
      missing: [],
      extra: [1],
    });
    expect(await send(alice.userId, [m(2)])).toMatchObject({
      code: "mismatched_devices",
      missing: [3],
      extra: [],
    });
    expect(await send(bob.userId, [m(2), m(2)])).toMatchObject({ type: "rejected", code: "invalid" });
    expect(await send(bob.userId, [m(1), m(3)])).toMatchObject({
      code: "mismatched_devices",
      missing: [2],
      extra: [3],
    });
    expect(await send(bob.userId, [m(2), m(1)])).toMatchObject({ type: "accepted" });
    await a.close();
  });

  test("a second socket for the same device closes the first with 4409, and the new one gets messages", async () => {
    const alice = await user();
    const bob = await user();
    const first = await connect(bob.sessions[0].accessToken);
    const second = await connect(bob.sessions[0].accessToken);
    expect((await first.whenClosed()).code).toBe(4409);
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, { 1: "x" }));
    await a.reply(id);
    expect((await second.messages(1))[0].id).toBe(id);
    await Promise.all([a.close(), second.close()]);
  });

  test("presence watchers hear a user come online and go offline with lastSeen", async () => {
    const alice = await user();
    const bob = await user();
    // Presence is shared between users who share a group (docs/PROTOCOL.md, "Presence").
    await relate(client, alice.sessions[0], { userId: bob.userId, accessToken: bob.sessions[0].accessToken });
    const a = await connect(alice.sessions[0].accessToken);
    a.send({ type: "presence.watch", users: [bob.userId] });
    const initial = await a.next((f) => f.type === "presence" && f.user === bob.userId);
    expect(initial.online).toBe(false);
    const b = await connect(bob.sessions[0].accessToken);
    expect((await a.next((f) => f.type === "presence" && f.user === bob.userId)).online).toBe(true);
    const before = Date.now();
    await b.close();
    const offline = await a.next((f) => f.type === "presence" && f.user === bob.userId && f.online === false);
    expect(offline.lastSeen).toBeGreaterThanOrEqual(before - 1000);
    await a.close();
  });

  test("removing a device closes its socket with 4404 and drops what was queued for it", async () => {
    const alice = await user();
    const bob = await user(2);
    const a = await connect(alice.sessions[0].accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, { 1: "one", 2: "two" }));
    expect((await a.reply(id)).type).toBe("accepted");
    // The offline device's copy reaches its queue after `accepted` (the actor flushes it): wait for it.
    const deadline = Date.now() + 10_000;
    while ((await node.offline.depth(bob.userId, 2)) === 0 && Date.now() < deadline) await Bun.sleep(20);
    expect(await node.offline.depth(bob.userId, 2)).toBe(1);
    const second = await connect(bob.sessions[1].accessToken);
    await second.messages(1);
    expect((await client.delete("/v1/devices/2", bob.sessions[0].accessToken)).status).toBe(204);
    expect((await second.whenClosed()).code).toBe(4404);
    expect(await node.offline.depth(bob.userId, 2)).toBe(0);
    const left = await node.log.metadataOf(bob.userId);
    expect(left.map((m) => m.recipientDevice)).toEqual([1]);
    await a.close();
  });

  test("a send racing the recipient's reconnect arrives once, after what was queued for it", async () => {
    const alice = await user();
    const a = await connect(alice.sessions[0].accessToken);
    for (let round = 0; round < 5; round++) {
      const bob = await user();
      const queued = randomUUID();
      a.send(direct(queued, bob.userId, { 1: "queued" }));
      expect((await a.reply(queued)).type).toBe("accepted");
      // The live one is sent the moment the socket opens, while the gateway still brings it online.
      const opening = connect(bob.sessions[0].accessToken);
      const live = randomUUID();
      const b = await opening;
      a.send(direct(live, bob.userId, { 1: "live" }));
      expect((await a.reply(live)).type).toBe("accepted");
      expect((await b.messages(2)).map((m) => m.id)).toEqual([queued, live]);
      expect(await messagesBeforeMarker(a, bob.userId, [b])).toEqual([[]]);
      await b.close();
    }
    // A first message to a user whose actor is not yet active, sent as their socket opens:
    // the activation must not push it and then push it again when the device finishes draining.
    for (let round = 0; round < 10; round++) {
      const bob = await user();
      const b = await connect(bob.sessions[0].accessToken);
      const first = randomUUID();
      a.send(direct(first, bob.userId, { 1: "first" }));
      expect((await a.reply(first)).type).toBe("accepted");
      expect((await b.messages(1))[0].id).toBe(first);
      expect(await messagesBeforeMarker(a, bob.userId, [b])).toEqual([[]]);
      await b.close();
    }
    await a.close();
  });
});
