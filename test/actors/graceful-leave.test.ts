import { afterAll, describe, expect, test } from "bun:test";
import type { ActorSystem } from "../../actors/index.ts";
import { CountingTransport, TestCluster, until } from "./cluster-harness.ts";

/** A transport whose stop reports its inbox not deleted, as a non-empty one is not. */
class KeepsInbox extends CountingTransport {
  override async stop(): Promise<boolean> {
    await super.stop();
    return false;
  }
}

/**
 * A node that stops gracefully but stays registered (its inbox was not empty, so RabbitMQ refused
 * to delete it: survivors' handoff notices sent after it stopped consuming) turns up among the
 * dead of the others' view. It did not die: it handed its actors off, closed its sockets and
 * announced its leave. Survivors must report it as `left`, not `expired` (which the gateway, the
 * log and the adoption line read as a crash), and still adopt and forget it.
 */
describe("a graceful stop that leaves the node registered", () => {
  const cluster = new TestCluster();
  afterAll(() => cluster.cleanup());

  test("is reported as left, not expired, and is still adopted and forgotten", async () => {
    const a: ActorSystem = await cluster.node("node-a");
    // Its inbox could not be deleted at stop (what a non-empty inbox does): it leaves registered.
    const b: ActorSystem = await cluster.node("node-b", (transport) => new KeepsInbox(transport));
    await cluster.converged(["node-a", "node-b"]);
    const reports: string[] = [];
    a.onNodesGone(({ expired, left, forgotten }) =>
      reports.push(
        ...expired.map((id) => `expired ${id}`),
        ...left.map((id) => `left ${id}`),
        ...forgotten.map((id) => `forgotten ${id}`),
      ),
    );
    await b.stop();
    cluster.nodes.delete("node-b");
    await until(() => reports.length >= 2, 15_000, "both reports on the survivor").catch((error) => {
      throw new Error(`${error}: ${reports.join(", ")}`);
    });
    // Before, the first report was "expired node-b": a graceful stop told as a death.
    expect(reports).toEqual(["left node-b", "forgotten node-b"]);
  }, 60_000);
});
