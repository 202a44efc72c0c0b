import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/**
 * The recipient's device list and block list are cached per user (src/messaging/service.ts); on
 * the embedded node they are kept until a change on the node drops them, never read again on a
 * timer. Each test warms the cache with a send, changes the list through its public route, and
 * sends again at once: a change path that does not reach the cache shows as the old answer.
 * (A device added by a login: delivery.test.ts, "a device the recipient adds is required at once".)
 */
describe.each(STACKS)("cached device and block lists on the %s stack", (stack) => {
  let node: TestNode;
  let client: Api;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** A 1:1 send frame naming `devices` of `to`. */
  function direct(id: string, to: string, devices: number[]) {
    const body = Buffer.from(id).toString("base64");
    return {
      type: "send",
      id,
      to: { user: to },
      messages: devices.map((deviceId) => ({ deviceId, type: 3, body })),
    };
  }

  /** Sends and returns the reply to it. */
  async function send(socket: TestSocket, to: string, devices: number[]) {
    const id = randomUUID();
    socket.send(direct(id, to, devices));
    return { id, reply: await socket.reply(id) };
  }

  /** Ids of the envelopes the log holds for `recipient` (an `accepted` send that was stored is there). */
  async function stored(recipient: string): Promise<string[]> {
    return (await node.log.metadataOf(recipient))
      .filter((m) => m.recipientUser === recipient)
      .map((m) => m.id);
  }

  test("a removed device is refused at once, though the last send cached the list with it", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    await loginDevice(client, bob, { registrationId: 99 });
    const a = await TestSocket.open(node.url, alice.accessToken);
    expect((await send(a, bob.userId, [1, 2])).reply.type).toBe("accepted");
    expect((await client.delete("/v1/devices/2", bob.accessToken)).status).toBe(204);
    const { id, reply } = await send(a, bob.userId, [1, 2]);
    expect(reply).toEqual({ type: "rejected", id, code: "mismatched_devices", missing: [], extra: [2] });
    expect((await send(a, bob.userId, [1])).reply.type).toBe("accepted");
    await a.close();
  });

  test("a block stops the next send at once, and lifting it lets the next one through", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const a = await TestSocket.open(node.url, alice.accessToken);
    const before = await send(a, bob.userId, [1]);
    expect(before.reply.type).toBe("accepted");
    expect(await stored(bob.userId)).toEqual([before.id]);

    expect((await client.post(`/v1/blocks/${alice.userId}`, undefined, bob.accessToken)).status).toBe(204);
    const blocked = await send(a, bob.userId, [1]);
    // Answered as any send (the sender cannot tell), stored nowhere.
    expect(blocked.reply).toMatchObject({ type: "accepted", id: blocked.id });
    expect(await stored(bob.userId)).toEqual([before.id]);

    expect((await client.delete(`/v1/blocks/${alice.userId}`, bob.accessToken)).status).toBe(204);
    const after = await send(a, bob.userId, [1]);
    expect(after.reply.type).toBe("accepted");
    expect(await stored(bob.userId)).toEqual([before.id, after.id]);
    await a.close();
  });

  test("a device added after the recipient's cached list had a removal is required at once", async () => {
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    await loginDevice(client, bob, { registrationId: 98 });
    const a = await TestSocket.open(node.url, alice.accessToken);
    expect((await client.delete("/v1/devices/2", bob.accessToken)).status).toBe(204);
    expect((await send(a, bob.userId, [1])).reply.type).toBe("accepted");
    // The new device takes the freed id 2 (its token generation is fresh): the cached [1] must go.
    expect((await loginDevice(client, bob, { registrationId: 97 })).deviceId).toBe(2);
    const { id, reply } = await send(a, bob.userId, [1]);
    expect(reply).toEqual({ type: "rejected", id, code: "mismatched_devices", missing: [2], extra: [] });
    await a.close();
  });
});
