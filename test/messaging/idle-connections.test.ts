import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { userKey } from "../../actors/index.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");
const direct = (id: string, to: string, text: string) => ({
  type: "send",
  id,
  to: { user: to },
  messages: [{ deviceId: 1, type: 3, body: b64(text) }],
});

describe.each(STACKS)("idle connections on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: stackEnv(stack, prefix) });
  });
  afterAll(() => node?.teardown());

  test("a connection with nothing pending activates no user actor; the first message does, and is pushed live", async () => {
    const alice = await registerAndLogin(api(node.url));
    const bob = await registerAndLogin(api(node.url));
    const b = await TestSocket.open(node.url, bob.accessToken);
    // A ping answered means the socket is open; its bringing online runs meanwhile.
    b.send({ type: "ping" });
    await b.next((f) => f.type === "pong");
    await Bun.sleep(300);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);

    const a = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, "hello"));
    expect((await a.reply(id)).type).toBe("accepted");
    expect((await b.messages(1)).map((m) => m.id)).toEqual([id]);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(true);
    await Promise.all([a.close(), b.close()]);
  });

  test("envelopes an actor left pending when it went away arrive on the device's next connect", async () => {
    const alice = await registerAndLogin(api(node.url));
    const bob = await registerAndLogin(api(node.url));
    const b = await TestSocket.open(node.url, bob.accessToken);
    const a = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, "not acked"));
    expect((await a.reply(id)).type).toBe("accepted");
    expect((await b.messages(1)).map((m) => m.id)).toEqual([id]);
    // The actor goes away without flushing (as on a crash of its node); the envelope stays pending in the log.
    await node.actors.stopActor(userKey(bob.userId), "test");
    await b.close();
    await Bun.sleep(200);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);

    const again = await TestSocket.open(node.url, bob.accessToken);
    expect((await again.messages(1)).map((m) => m.id)).toEqual([id]);
    await Promise.all([a.close(), again.close()]);
  });
});
