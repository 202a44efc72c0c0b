import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import type { NodeLink } from "../../src/gateway/node-link.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { socketState, startTestNode, type TestNode } from "../support/node.ts";
import { ackOf, TestSocket, waitUntil } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

/** The node link a node's user actors reach sockets through (their `DeviceSockets` port). */
function linkOf(node: TestNode): NodeLink {
  return (node.gateway as unknown as { options: { link: NodeLink } }).options.link;
}

/**
 * A group message fanned out to member sockets on the user actors' own node is written to each
 * socket before the push returns (`DeviceSockets.pushHere`), not through `push` and its promise per
 * member device (docs/BENCHMARKS.md "Fan-out, stop 31"); what the members receive is as before.
 */
describe("group fan-out to sockets on the same node", () => {
  let node: TestNode;

  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(() => node?.teardown());

  test("every member gets each message, in order, and no push goes through the promise path", async () => {
    const client = api(node.url);
    const owner = await registerAndLogin(client);
    const members = await Promise.all([1, 2, 3].map(() => registerAndLogin(client)));
    const { groupId } = (
      await client.post(
        "/v1/groups",
        { name: "local fan-out", members: members.map((m) => m.userId) },
        owner.accessToken,
      )
    ).body;
    for (const m of members)
      expect((await client.post(`/v1/invitations/${groupId}/accept`, undefined, m.accessToken)).status).toBe(
        204,
      );
    const sender = await TestSocket.open(node.url, owner.accessToken);
    const sockets = await Promise.all(members.map((m) => TestSocket.open(node.url, m.accessToken)));
    for (const m of members)
      await waitUntil(() => socketState(node, m.userId) === "live", "a member's socket live");

    // Counted from here: a push of this node's user actors that goes through `push`.
    const link = linkOf(node);
    const real = link.push.bind(link);
    let pushes = 0;
    link.push = (...args: Parameters<NodeLink["push"]>) => {
      pushes++;
      return real(...args);
    };
    try {
      for (const text of ["first", "second"]) {
        const id = randomUUID();
        sender.send({ type: "send", id, to: { group: groupId }, message: { type: 7, body: b64(text) } });
        expect((await sender.reply(id)).type).toBe("accepted");
        const received = await Promise.all(sockets.map((s) => s.messages(1)));
        for (const [m] of received) {
          expect(m).toMatchObject({
            type: "message",
            id,
            group: groupId,
            from: { user: owner.userId, device: 1 },
            envelope: { type: 7, body: b64(text) },
          });
        }
        for (const [i, [m]] of received.entries()) if (m) sockets[i]?.send(ackOf([m]));
      }
      expect(pushes).toBe(0);
    } finally {
      link.push = real;
      await Promise.all([sender, ...sockets].map((s) => s.close()));
    }
  });
});
