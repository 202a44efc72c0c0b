import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { ClearBoxClient, type ClearBoxSocket, type MessageFrame } from "../../src/client/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { uniqueUsername } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";

/** A connected SDK client that collects the message frames it receives. */
async function person(node: TestNode) {
  const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
  await client.register(uniqueUsername("e2e"), "correct horse battery");
  const socket = await client.connect();
  const inbox: MessageFrame[] = [];
  const waiters: (() => void)[] = [];
  socket.on("message", (frame) => {
    inbox.push(frame);
    socket.ack([frame]);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (timeoutMs = 10_000): Promise<MessageFrame> => {
    const deadline = Date.now() + timeoutMs;
    while (inbox.length === 0) {
      if (Date.now() > deadline) throw new Error("no message arrived");
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
    return inbox.shift() as MessageFrame;
  };
  return { client, socket, next, userId: client.userId as string };
}

async function sendText(from: { client: ClearBoxClient; socket: ClearBoxSocket }, to: string, text: string) {
  const id = randomUUID();
  const answer = await from.socket.sendToUser(id, to, await from.client.encrypt(to, text));
  expect(answer.type).toBe("accepted");
  return id;
}

describe.each(STACKS)("Signal-encrypted chat through the gateway on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";
  const plaintexts: string[] = [];

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
  });
  afterAll(() => node?.teardown());

  test("A and B exchange 1:1 messages over real sessions, and B reads what arrived while offline", async () => {
    const alice = await person(node);
    const bob = await person(node);
    const hello = `hello bob ${randomUUID()}`;
    plaintexts.push(hello);
    const id = await sendText(alice, bob.userId, hello);
    const got = await bob.next();
    expect(got.id).toBe(id);
    expect(got.envelope.type).toBe(3);
    expect(await bob.client.decryptText(got)).toBe(hello);

    const reply = `hi alice ${randomUUID()}`;
    plaintexts.push(reply);
    await sendText(bob, alice.userId, reply);
    expect(await alice.client.decryptText(await alice.next())).toBe(reply);

    // Bob goes offline; three more wait for him and decrypt in order when he is back.
    bob.socket.close();
    await Bun.sleep(200);
    const later = [1, 2, 3].map((n) => `while you were away ${n} ${randomUUID()}`);
    plaintexts.push(...later);
    for (const text of later) await sendText(alice, bob.userId, text);
    const back = await bob.client.connect();
    const received: string[] = [];
    back.on("message", async (frame) => {
      received.push(await bob.client.decryptText(frame));
      back.ack([frame]);
    });
    const deadline = Date.now() + 10_000;
    while (received.length < 3 && Date.now() < deadline) await Bun.sleep(50);
    expect(received).toEqual(later);
    alice.socket.close();
    back.close();
  });

  test("a group message encrypted once with a sender key is read by every member", async () => {
    const alice = await person(node);
    const bob = await person(node);
    const carol = await person(node);
    const created = await alice.client.http.createGroup({
      name: "e2ee",
      members: [bob.userId, carol.userId],
    });
    for (const member of [bob, carol]) await member.client.http.acceptInvitation(created.groupId);
    const distributionId = randomUUID();
    const distribution = Buffer.from(await alice.client.groupDistribution(distributionId)).toString("base64");
    for (const member of [bob, carol]) {
      await sendText(alice, member.userId, distribution);
      const frame = await member.next();
      const text = await member.client.decryptText(frame);
      await member.client.processGroupDistribution(frame.from, Buffer.from(text, "base64"));
    }
    const secret = `group secret ${randomUUID()}`;
    plaintexts.push(secret);
    const id = randomUUID();
    const answer = await alice.socket.sendToGroup(
      id,
      created.groupId,
      await alice.client.groupEncrypt(distributionId, secret),
    );
    expect(answer.type).toBe("accepted");
    for (const member of [bob, carol]) {
      const frame = await member.next();
      expect(frame.group).toBe(created.groupId);
      expect(frame.envelope.type).toBe(7);
      expect(
        new TextDecoder().decode(await member.client.groupDecrypt(frame.from, frame.envelope.body)),
      ).toBe(secret);
    }
    for (const p of [alice, bob, carol]) p.socket.close();
  });

  test("the server's envelope log holds ciphertext only: no plaintext of any message above", async () => {
    expect(plaintexts.length).toBeGreaterThan(4);
    const result: any = await node.database.db.execute(
      sql`select body from envelopes where body is not null`,
    );
    const rows: { body: Uint8Array }[] = result.rows ?? result;
    const stored = rows.map((r) => Buffer.from(r.body).toString("latin1")).join("\n");
    const metadata = JSON.stringify(await node.database.db.execute(sql`select * from envelopes`));
    for (const text of plaintexts) {
      expect(stored).not.toContain(text);
      expect(metadata).not.toContain(text);
    }
  });
});
