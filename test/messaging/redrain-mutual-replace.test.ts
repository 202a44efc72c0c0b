import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { api, registerAndLogin } from "../support/http.ts";
import { startTwoNodes, type TestNode } from "../support/node.ts";
import { TestSocket } from "../support/ws.ts";

/** Rounds of two sockets of one device opened at once, one on each node (more to chase it). */
const ROUNDS = Number(process.env.MUTUAL_ROUNDS ?? 20);

/**
 * A device whose connection drops and comes back through a load balancer can have two sockets
 * opening at once on two nodes. Each replaces the other device sockets it finds in the presence
 * leases on other nodes (4409, "replaced by a newer connection"), without asking which is newer:
 * the older socket's step may find and close the newer one while the newer closes the older, and
 * the device is left with no socket, told on its newest one not to reconnect (4409,
 * docs/PROTOCOL.md). One of the two must stay open.
 */
describe("two sockets of one device opened at once on two nodes", () => {
  let a: TestNode;
  let b: TestNode;
  let cluster: Awaited<ReturnType<typeof startTwoNodes>> | undefined;

  beforeAll(async () => {
    cluster = await startTwoNodes("mutual");
    ({ a, b } = cluster);
  });
  afterAll(() => cluster?.teardown());

  // Before connection ids were ordered (UUIDv7), each socket closed the other: both 4409 in 20 of 20 rounds.
  test(`one of the two stays open (${ROUNDS} rounds)`, async () => {
    const gina = await registerAndLogin(api(a.url));
    const bothClosed: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const [x, y] = await Promise.all([
        TestSocket.open(b.url, gina.accessToken),
        TestSocket.open(a.url, gina.accessToken),
      ]);
      // Settle: each socket's replacement step has run (or it closed).
      await x.whenClosed(2_000).catch(() => undefined);
      await y.whenClosed(2_000).catch(() => undefined);
      if (x.closed && y.closed) bothClosed.push(round);
      for (const s of [x, y]) if (!s.closed) await s.close();
    }
    expect(bothClosed).toEqual([]);
  }, 120_000);
});
