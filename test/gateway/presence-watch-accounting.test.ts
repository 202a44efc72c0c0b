import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { type Api, api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

const randomIds = (n: number) => Array.from({ length: n }, () => randomUUID());

async function eventually(check: () => boolean, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

/**
 * The per-account watch count (PRESENCE_WATCHES_PER_ACCOUNT) follows the sockets' lists: back to
 * nothing when a device's socket is replaced by its next one (4409), after a burst of lists on one
 * socket, and after the account's erasure (4410). A count that drifted up would refuse the
 * account's lists for as long as the node runs.
 */
describe("presence watch accounting per account", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    node = await startTestNode("pglite", {
      env: { DEVICE_RATE_LIMIT: "1000000", PRESENCE_WATCHES_PER_ACCOUNT: "1000" },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  /** The watch entries the node counts for each account (the private map the bound reads). */
  const ownerEntries = () =>
    (node.gateway as unknown as { watchers: { ownerEntries: Map<string, number> } }).watchers.ownerEntries;

  test("replaced sockets, bursts of lists and an erasure leave no count behind", async () => {
    const alice = await registerAndLogin(client);
    const first = await TestSocket.open(node.url, alice.accessToken);
    first.send({ type: "presence.watch", users: randomIds(1000) });
    await eventually(() => node.gateway.watchStats().entries === 1000, "the first list");
    // The same device connects again: the old socket goes (4409) and its list with it.
    const second = await TestSocket.open(node.url, alice.accessToken);
    expect((await first.whenClosed()).code).toBe(4409);
    await eventually(() => node.gateway.watchStats().entries === 0, "the replaced socket's list gone");
    expect(ownerEntries().get(alice.userId)).toBeUndefined();
    // Ten lists at once on one socket: only the last stays, and the account's full share is usable.
    for (let i = 0; i < 10; i++) second.send({ type: "presence.watch", users: randomIds(1000) });
    await Bun.sleep(200);
    await eventually(() => node.gateway.watchStats().entries === 1000, "one list of 1000");
    expect(ownerEntries().get(alice.userId)).toBe(1000);
    expect(second.frames.filter((f) => f.type === "error")).toEqual([]);
    // Erasure closes the socket (4410): nothing of the account is left counted.
    const erasing = await client.call("DELETE", "/v1/me", {
      token: alice.accessToken,
      body: { password: alice.password },
    });
    expect(erasing.status).toBe(202);
    expect((await second.whenClosed(10_000)).code).toBe(4410);
    await node.gdpr.erasures.settled(erasing.body.erasureId);
    await eventually(() => node.gateway.watchStats().entries === 0, "the erased account's list gone");
    expect(ownerEntries().size).toBe(0);
  }, 60_000);
});
