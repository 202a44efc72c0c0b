import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/index.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { untilLockWaiters } from "../support/postgres.ts";
import { TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/**
 * A send to a device that is removed while the send is on its way to the log. The send passed the
 * device check before the removal, its append committed after the removal had erased the device's
 * rows: the removal answered 204 and the ciphertext for the removed device stayed in the log (until
 * retention, 30 days by default), where the next device given that id would be handed it. The test
 * makes the append wait, in the log, for a row its own transaction holds uncommitted under the same
 * key (ON CONFLICT waits for it), removes the device meanwhile, and rolls back. PostgreSQL: PGlite
 * runs one transaction at a time.
 */
describe("a send racing the removal of a recipient device (PostgreSQL)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres");
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** Envelope rows for one device of a user. */
  async function rowsFor(userId: string, deviceId: number): Promise<number> {
    const [row] = rowsOf<{ n: number }>(
      await node.database.db.execute(
        sql`select count(*)::int as n from envelopes
            where recipient_user = ${userId} and recipient_device = ${deviceId}`,
      ),
    );
    return row?.n ?? 0;
  }

  test("leaves no envelope for the removed device once both have answered", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const phone = await loginDevice(client, bob, { registrationId: 202 });
    expect(phone.deviceId).toBe(2);
    const socket = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    let removed = 0;
    await node.database.db
      .transaction(async (tx) => {
        // The same key as the send's row for the phone: its insert waits for this transaction.
        await tx.execute(sql`
        insert into envelopes (id, sender_user, sender_device, recipient_user, recipient_device, ts, type, body, state)
        values (${id}, ${alice.userId}, ${alice.deviceId}, ${bob.userId}, ${phone.deviceId}, 0, 1, null, 'pending')`);
        socket.send({
          type: "send",
          id,
          to: { user: bob.userId },
          messages: [1, phone.deviceId].map((deviceId) => ({
            deviceId,
            type: 3,
            body: b64("for the phone"),
          })),
        });
        await untilLockWaiters(node.database.db);
        removed = (await client.delete(`/v1/devices/${phone.deviceId}`, bob.accessToken)).status;
        throw new Rollback();
      })
      .catch((error: unknown) => {
        if (!(error instanceof Rollback)) throw error;
      });
    expect(removed).toBe(204);
    const reply = await socket.reply(id);
    // Either answer is fine (the send crossed the removal); what it leaves behind is not.
    expect(["accepted", "rejected"]).toContain(reply.type);
    socket.close();
    expect(await rowsFor(bob.userId, phone.deviceId)).toBe(0);
  });

  test("a group send leaves no envelope for the removed device once both have answered", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const made = await client.post("/v1/groups", { name: "race", members: [bob.userId] }, alice.accessToken);
    const { groupId } = made.body;
    expect((await client.post(`/v1/invitations/${groupId}/accept`, {}, bob.accessToken)).status).toBe(204);
    const phone = await loginDevice(client, bob, { registrationId: 203 });
    expect(phone.deviceId).toBe(2);
    const socket = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    let removed = 0;
    await node.database.db
      .transaction(async (tx) => {
        // The same key as the send's group_messages row: its insert waits for this transaction.
        await tx.execute(sql`
          insert into group_messages (id, sender_user, sender_device, group_id, ts, type, body, recipients)
          values (${id}, ${alice.userId}, ${alice.deviceId}, ${groupId}, 0, 7, null, null)`);
        socket.send({
          type: "send",
          id,
          to: { group: groupId },
          message: { type: 7, body: b64("for the phone") },
        });
        await untilLockWaiters(node.database.db);
        removed = (await client.delete(`/v1/devices/${phone.deviceId}`, bob.accessToken)).status;
        throw new Rollback();
      })
      .catch((error: unknown) => {
        if (!(error instanceof Rollback)) throw error;
      });
    expect(removed).toBe(204);
    expect((await socket.reply(id)).type).toBe("accepted");
    socket.close();
    expect(await rowsFor(bob.userId, phone.deviceId)).toBe(0);
    // Nor does the stored send name it for a later expansion.
    const [row] = rowsOf<{ recipients: Record<string, number[]> | null }>(
      await node.database.db.execute(sql`select recipients from group_messages where id = ${id}`),
    );
    expect(row?.recipients?.[bob.userId] ?? []).not.toContain(phone.deviceId);
  });
});

/**
 * The same race, with the sender's storage quota on: the send is charged both bodies, the one for
 * the removed device is erased again once the append commits (`dropRemovedDevices`), and its bytes
 * must go back to the sender's budget; before, they stayed charged for the rest of the day.
 */
describe("a send racing the removal of a recipient device, with a storage quota (PostgreSQL)", () => {
  const BUDGET = 4096;
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("postgres", { env: { STORED_BYTES_PER_ACCOUNT_PER_DAY: String(BUDGET) } });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("the bytes stored for the removed device and erased again are refunded to the sender", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const phone = await loginDevice(client, bob, { registrationId: 204 });
    expect(phone.deviceId).toBe(2);
    const socket = await TestSocket.open(node.url, alice.accessToken);
    const body = Buffer.from("x".repeat(2000)).toString("base64"); // 2000 bytes decoded
    const id = randomUUID();
    let removed = 0;
    await node.database.db
      .transaction(async (tx) => {
        // The same key as the send's row for the phone: its insert waits for this transaction.
        await tx.execute(sql`
        insert into envelopes (id, sender_user, sender_device, recipient_user, recipient_device, ts, type, body, state)
        values (${id}, ${alice.userId}, ${alice.deviceId}, ${bob.userId}, ${phone.deviceId}, 0, 1, null, 'pending')`);
        // 2 × 2000 = 4000 of the 4096 bytes charged, then the append waits.
        socket.send({
          type: "send",
          id,
          to: { user: bob.userId },
          messages: [1, phone.deviceId].map((deviceId) => ({ deviceId, type: 3, body })),
        });
        await untilLockWaiters(node.database.db);
        removed = (await client.delete(`/v1/devices/${phone.deviceId}`, bob.accessToken)).status;
        throw new Rollback();
      })
      .catch((error: unknown) => {
        if (!(error instanceof Rollback)) throw error;
      });
    expect(removed).toBe(204);
    expect(await socket.reply(id)).toMatchObject({ type: "accepted", id });
    const [left] = rowsOf<{ n: number }>(
      await node.database.db.execute(
        sql`select count(*)::int as n from envelopes where recipient_user = ${bob.userId}`,
      ),
    );
    expect(left?.n).toBe(1); // the phone's body was erased again, the other device's kept
    // Only the 2000 bytes kept are charged: another 2000 fit the 4096 (6000 would not).
    const again = {
      type: "send",
      id: randomUUID(),
      to: { user: bob.userId },
      messages: [{ deviceId: 1, type: 3, body }],
    };
    socket.send(again);
    expect(await socket.reply(again.id)).toMatchObject({ type: "accepted", id: again.id });
    socket.close();
  });
});

class Rollback extends Error {}
