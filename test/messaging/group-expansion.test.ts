import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import type { DeliverGroupMessage } from "../../actors/index.ts";
import { rowsOf } from "../../src/db/index.ts";
import { GroupExpansionSweep } from "../../src/messaging/group-expansion-sweep.ts";
import { SqliteEnvelopeLog } from "../../src/messaging/sqlite-envelope-log.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase } from "../support/postgres.ts";
import { ackOf, type Frame, messagesBeforeMarker, TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

type Person = Awaited<ReturnType<typeof registerAndLogin>>;

/** A group of `owner` and `members` (invitations accepted). */
async function makeGroup(client: Api, owner: Person, members: Person[]): Promise<string> {
  const { groupId } = (
    await client.post("/v1/groups", { name: "g", members: members.map((m) => m.userId) }, owner.accessToken)
  ).body;
  for (const m of members) {
    expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, m.accessToken)).status).toBe(
      204,
    );
  }
  return groupId;
}

/** Group messages the node's log holds unexpanded, read beside the log (a read through it would expand them). */
async function unexpanded(node: TestNode): Promise<number> {
  if (node.log.kind === "postgres") {
    const result = await node.database.db.execute(
      sql`select count(*)::int as n from group_messages where recipients is not null`,
    );
    return Number(rowsOf<{ n: number }>(result)[0]?.n ?? 0);
  }
  const file = new Database(join(node.dataDir, "envelopes.db"), { readonly: true });
  try {
    const row = file.query("select count(*) as n from group_messages where recipients is not null").get() as {
      n: number;
    };
    return row.n;
  } finally {
    file.close();
  }
}

/**
 * Activates the receivers' user actors with a group message they get and ack (an idle socket
 * activates none, and an activation reads the log, which expands what is pending), then waits until
 * nothing is left unexpanded; the caller then waits out the actors' recovery window.
 */
async function warmUp(node: TestNode, sender: TestSocket, groupId: string, receivers: TestSocket[]) {
  const id = randomUUID();
  sender.send({ type: "send", id, to: { group: groupId }, message: { type: 7, body: b64("warm-up") } });
  expect((await sender.reply(id)).type).toBe("accepted");
  for (const receiver of receivers) {
    const got = await receiver.messages(1);
    expect(got[0]).toMatchObject({ id });
    receiver.send(ackOf(got));
  }
  for (let i = 0; i < 100 && (await unexpanded(node)) > 0; i++) await Bun.sleep(100);
  expect(await unexpanded(node)).toBe(0);
}

describe.each(STACKS)("group messages stored once, on the %s stack", (stack) => {
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  test("an ack that overtakes the expansion stays an ack: nothing comes again on reconnect, and the offline queue's mark keeps its copy", async () => {
    // A short recovery window (nine heartbeats), waited out below: a deliver to an actor still in
    // it is read back from the log, which would expand the message before the ack.
    const env = { ...stackEnv(stack, runPrefix()), CLUSTER_HEARTBEAT_MS: "100" };
    const node = await startTestNode(backend, { env, expandGroups: false });
    try {
      const client = api(node.url);
      const [alice, bob] = await Promise.all([1, 2].map(() => registerAndLogin(client)));
      const groupId = await makeGroup(client, alice, [bob]);
      const b = await TestSocket.open(node.url, bob.accessToken);
      const a = await TestSocket.open(node.url, alice.accessToken);
      await warmUp(node, a, groupId, [b]);
      await Bun.sleep(2000);
      const id = randomUUID();
      a.send({ type: "send", id, to: { group: groupId }, message: { type: 7, body: b64("hello") } });
      expect((await a.reply(id)).type).toBe("accepted");
      const got = await b.messages(1);
      expect(got[0]).toMatchObject({ id, group: groupId });
      expect(await unexpanded(node)).toBe(1);
      b.send(ackOf(got));
      // The ack's write expands the message first (polled: the ack is group-committed).
      for (let i = 0; i < 100 && (await unexpanded(node)) > 0; i++) await Bun.sleep(100);
      expect(await unexpanded(node)).toBe(0);
      await b.close();
      const again = await TestSocket.open(node.url, bob.accessToken);
      // A redelivery would come from the log, before a live message sent now.
      expect(await messagesBeforeMarker(a, bob.userId, [again])).toEqual([[]]);
      const meta = await node.log.metadataOf(bob.userId);
      expect(meta.filter((m) => m.id === id).map((m) => m.state)).toEqual(["acked"]);
      // Bob away: the next message goes to his offline queue, whose `queued` mark writes the rows.
      await again.close();
      await Bun.sleep(300);
      const later = randomUUID();
      a.send({ type: "send", id: later, to: { group: groupId }, message: { type: 7, body: b64("later") } });
      expect((await a.reply(later)).type).toBe("accepted");
      const back = await TestSocket.open(node.url, bob.accessToken);
      expect((await back.messages(1, 30_000))[0]).toMatchObject({ id: later, group: groupId });
      await Promise.all([a.close(), back.close()]);
    } finally {
      await node.teardown();
    }
  });

  test("a node that dies between accepted and the expansion loses nothing: every member device gets the message from the next node", async () => {
    // A short recovery window (nine heartbeats), waited out below: a deliver to an actor still in
    // it is read back from the log, which would expand the message on this node.
    const env = { ...stackEnv(stack, runPrefix()), CLUSTER_HEARTBEAT_MS: "100" };
    const database = backend === "postgres" ? await createTestDatabase() : undefined;
    const first = await startTestNode(backend, { env, database, keepData: true, expandGroups: false });
    let second: TestNode | undefined;
    try {
      const client = api(first.url);
      const [alice, bob, carol] = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
      const groupId = await makeGroup(client, alice, [bob, carol]);
      // Both online and acking nothing: no ack, flush or read expands the message on this node.
      const b = await TestSocket.open(first.url, bob.accessToken);
      const c = await TestSocket.open(first.url, carol.accessToken);
      const a = await TestSocket.open(first.url, alice.accessToken);
      await warmUp(first, a, groupId, [b, c]);
      await Bun.sleep(2000);
      const id = randomUUID();
      a.send({
        type: "send",
        id,
        to: { group: groupId },
        message: { type: 7, body: b64("before the crash") },
      });
      expect((await a.reply(id)).type).toBe("accepted");
      await Promise.all([b.messages(1), c.messages(1)]);
      expect(await unexpanded(first)).toBe(1);
      await first.abort();

      second = await startTestNode(backend, { env, database, dataDir: first.dataDir });
      const client2 = api(second.url);
      expect((await client2.get(`/v1/groups/${groupId}`, bob.accessToken)).status).toBe(200);
      for (const person of [bob, carol]) {
        const socket = await TestSocket.open(second.url, person.accessToken);
        const [got] = await socket.messages(1, 30_000);
        expect(got).toMatchObject({ id, group: groupId, from: { user: alice.userId, device: 1 } });
        expect(Buffer.from(got?.envelope.body, "base64").toString()).toBe("before the crash");
        socket.send(ackOf([got as Frame]));
        await Bun.sleep(300);
        await socket.close();
      }
      expect(await unexpanded(second)).toBe(0);
      const alice2 = await TestSocket.open(second.url, alice.accessToken);
      for (const person of [bob, carol]) {
        const socket = await TestSocket.open(second.url, person.accessToken);
        // A redelivery would come from the log, before a live message sent now.
        expect(await messagesBeforeMarker(alice2, person.userId, [socket])).toEqual([[]]);
        await socket.close();
      }
      await alice2.close();
    } finally {
      await second?.teardown();
      if (database) await database.drop();
      rmSync(first.dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("the group expansion sweep", () => {
  test("expands what no node expanded and tells each recipient's actor the devices it wrote rows for", async () => {
    const log = await SqliteEnvelopeLog.open(null, undefined, { expandInBackground: false });
    const told: { users: string[]; message: DeliverGroupMessage }[] = [];
    const sweep = new GroupExpansionSweep({
      log,
      tell: async (users, message) => {
        told.push({ users, message });
      },
      ageMs: 1000,
    });
    try {
      const [a, b] = [randomUUID(), randomUUID()];
      const message = {
        id: randomUUID(),
        senderUser: randomUUID(),
        senderDevice: 1,
        groupId: randomUUID(),
        ts: Date.now() - 5000,
        type: 7,
        body: b64("left by a dead node"),
      };
      await log.appendGroup(message, { [a]: [1], [b]: [1, 2] });
      expect(await sweep.runOnce()).toBe(1);
      expect(told).toEqual([
        {
          users: [a, b],
          message: { type: "deliver.group", envelope: message, devices: { [a]: [1], [b]: [1, 2] } },
        },
      ]);
      expect(await sweep.runOnce()).toBe(0);
      expect(told).toHaveLength(1);
      expect((await log.undelivered(b)).map((e) => e.recipientDevice)).toEqual([1, 2]);
    } finally {
      await sweep.stop();
      await log.close();
    }
  });
});
