import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { userKey } from "../../actors/index.ts";
import type { SocketRegistry } from "../../src/gateway/socket-registry.ts";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { expectEachOnce } from "../support/exactly-once.ts";
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

/** What the gateway keeps, read for the test's waits (not part of its interface). */
function internals(node: TestNode): { registry: SocketRegistry; closing: Set<Promise<void>> } {
  const gateway = node.gateway as unknown as {
    options: { registry: SocketRegistry };
    closing: Set<Promise<void>>;
  };
  return { registry: gateway.options.registry, closing: gateway.closing };
}

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

/** Waits until the device's socket on `node` has drained its queue and answers `live`. */
function liveOn(node: TestNode, userId: string): Promise<void> {
  return until(() => internals(node).registry.get(userId, 1)?.state === "live", `${userId}'s socket live`);
}

/** Waits until every closed socket's bookkeeping on `node` (presence, the actor's notice) is done. */
function closedOn(node: TestNode, userId: string): Promise<void> {
  return until(
    () => internals(node).registry.get(userId, 1) === undefined && internals(node).closing.size === 0,
    `${userId}'s close bookkeeping`,
  );
}

describe.each(STACKS)("idle connections on the %s stack", (stack) => {
  let node: TestNode;
  const prefix = runPrefix();
  const backend: Backend = stack === "embedded" ? "pglite" : "postgres";

  beforeAll(async () => {
    node = await startTestNode(backend, { env: { ...stackEnv(stack, prefix), DEVICE_RATE_LIMIT: "100000" } });
  });
  afterAll(() => node?.teardown());

  test("a connection with nothing owed activates no user actor, nor does its close; a message does and is pushed live", async () => {
    const alice = await registerAndLogin(api(node.url));
    const bob = await registerAndLogin(api(node.url));
    const first = await TestSocket.open(node.url, bob.accessToken);
    await liveOn(node, bob.userId);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);
    // The gateway let go of the empty drain: an idle socket keeps none.
    expect(internals(node).registry.get(bob.userId, 1)?.drain).toBeUndefined();
    await first.close();
    await closedOn(node, bob.userId);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);

    const b = await TestSocket.open(node.url, bob.accessToken);
    await liveOn(node, bob.userId);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);
    const a = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, "hello"));
    expect((await a.reply(id)).type).toBe("accepted");
    expect((await b.messages(1)).map((m) => m.id)).toEqual([id]);
    expect(node.actors.isActive(userKey(bob.userId))).toBe(true);
    await Promise.all([a.close(), b.close()]);
  });

  test("envelopes an actor left pending when it went away arrive once the device's next connection has drained", async () => {
    const alice = await registerAndLogin(api(node.url));
    const bob = await registerAndLogin(api(node.url));
    const b = await TestSocket.open(node.url, bob.accessToken);
    const a = await TestSocket.open(node.url, alice.accessToken);
    const id = randomUUID();
    a.send(direct(id, bob.userId, "not acked"));
    expect((await a.reply(id)).type).toBe("accepted");
    expect((await b.messages(1)).map((m) => m.id)).toEqual([id]);
    // The actor goes away without flushing (as on a crash of its node): the envelope stays `pending`.
    await node.actors.stopActor(userKey(bob.userId), "test");
    await b.close();
    await closedOn(node, bob.userId);
    // The close found no actor and woke none: the envelope is still pending in the log, not queued.
    expect(node.actors.isActive(userKey(bob.userId))).toBe(false);
    expect((await node.log.undelivered(bob.userId, { state: "pending" })).map((e) => e.id)).toEqual([id]);

    const again = await TestSocket.open(node.url, bob.accessToken);
    expect((await again.messages(1)).map((m) => m.id)).toEqual([id]);
    again.send({ type: "ack", ids: [id] });
    await until(
      async () => (await node.log.undelivered(bob.userId)).length === 0,
      "the ack recorded in the log",
    );
    await Promise.all([a.close(), again.close()]);
  });

  test("recipients connecting while messages arrive for them get every accepted message exactly once", async () => {
    const alice = await registerAndLogin(api(node.url));
    const recipients = await Promise.all(Array.from({ length: 12 }, () => registerAndLogin(api(node.url))));
    const a = await TestSocket.open(node.url, alice.accessToken);
    const accepted = new Map<string, string[]>();
    const sockets = await Promise.all(
      recipients.map(async (r) => {
        // The sends start as the socket opens: their deliver activates the actor while the socket
        // is still opening or draining.
        const opening = TestSocket.open(node.url, r.accessToken);
        const ids = Array.from({ length: 6 }, () => randomUUID());
        accepted.set(r.userId, ids);
        for (const id of ids) a.send(direct(id, r.userId, "racing the connect"));
        return opening;
      }),
    );
    for (const ids of accepted.values()) {
      for (const id of ids) expect((await a.reply(id, 15_000)).type).toBe("accepted");
    }
    await expectEachOnce(recipients, sockets, accepted);
    await Promise.all([a.close(), ...sockets.map((s) => s.close())]);
  });
});
