import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ClearBoxClient, Messenger } from "../../src/client/index.ts";
import type { MessageFrame } from "../../src/client/socket.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

/**
 * Access-token lifetime of this suite, seconds: the SDK must renew several times during a test. It
 * renews half a lifetime before the expiry; at 3 s that left a refresh and its auth frame 1.5 s,
 * short on a loaded machine.
 */
const TTL_SECONDS = 5;
const password = "correct horse battery";

async function until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
}

describe("the SDK keeps its sockets authenticated", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite", { env: { ACCESS_TOKEN_TTL_SECONDS: String(TTL_SECONDS) } });
  });
  afterAll(() => node?.teardown());

  test("a ClearBoxSocket (what the CLI listens on) and a Messenger stay open across three token lifetimes and still deliver", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const carol = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    await bob.register(uniqueUsername("bob"), password);
    await carol.register(uniqueUsername("carol"), password);

    const socket = await alice.connect();
    const closes: number[] = [];
    const renewed: number[] = [];
    const received: MessageFrame[] = [];
    socket.on("close", (code) => closes.push(code));
    socket.on("auth.ok", (frame) => renewed.push(frame.expiresAt));
    socket.on("message", (frame) => received.push(frame));

    const messenger = new Messenger(carol, { minDelayMs: 50, maxDelayMs: 500 });
    const statuses: string[] = [];
    const texts: string[] = [];
    messenger.on("status", (status) => statuses.push(status));
    messenger.on("message", (m) => {
      if (!m.outgoing) texts.push(m.text);
    });
    messenger.start();
    await until(() => messenger.isOnline, "the messenger's socket");

    // Three lifetimes of the token the sockets opened with: each must have been renewed in-band.
    const end = Date.now() + 3 * TTL_SECONDS * 1000 + 500;
    await until(() => Date.now() > end, "three token lifetimes");
    expect(closes).toEqual([]);
    expect(renewed.length).toBeGreaterThanOrEqual(3);
    expect(statuses).toEqual(["online"]);

    const bobSocket = await bob.connect();
    const messages = await bob.encrypt(alice.userId, "after three lifetimes");
    expect((await bobSocket.sendToUser(crypto.randomUUID(), alice.userId, messages)).type).toBe("accepted");
    await until(() => received.length === 1, "alice's message");
    expect(await alice.decryptText({ from: received[0].from, envelope: received[0].envelope })).toBe(
      "after three lifetimes",
    );
    const outgoing = new Messenger(bob, { minDelayMs: 50, maxDelayMs: 500 });
    outgoing.start();
    await outgoing.sendText(carol.userId, "hello carol");
    await until(() => texts.length === 1, "carol's message");
    expect(texts).toEqual(["hello carol"]);
    expect(statuses).toEqual(["online"]);

    outgoing.stop();
    messenger.stop();
    socket.close();
    bobSocket.close();
    for (const c of [alice, bob, carol]) c.close();
  });
});
