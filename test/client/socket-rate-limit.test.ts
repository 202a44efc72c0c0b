import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ClearBoxClient } from "../../src/client/index.ts";
import type { MessageFrame, RejectedFrame } from "../../src/client/socket.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

const password = "correct horse battery";

async function until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
}

// ClearBoxSocket is the SDK's low-level socket (the CLI's): a send the device's frame budget
// refused (`rejected rate_limited`, nothing stored) was handed to the caller as the send's answer,
// where the Messenger waited and sent it again. It now goes again itself; a refusal of the
// account's daily storage quota (retryAfterMs of hours) is still returned at once.
describe("ClearBoxSocket and rate_limited refusals", () => {
  let node: TestNode;
  beforeAll(async () => {
    // 5 frames a second, bursts of 10; 100 kB of ciphertext an account a day.
    node = await startTestNode("pglite", {
      env: { DEVICE_RATE_LIMIT: "5", STORED_BYTES_PER_ACCOUNT_PER_DAY: "100000" },
    });
  });
  afterAll(() => node?.teardown());

  test("sends past the device's frame budget are sent again until accepted, each delivered once", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    try {
      await alice.register(uniqueUsername("alice"), password);
      await bob.register(uniqueUsername("bob"), password);
      const inbox = await alice.connect();
      const received: MessageFrame[] = [];
      inbox.on("message", (frame) => received.push(frame));
      const socket = await bob.connect();
      const sends: { id: string; messages: Awaited<ReturnType<typeof bob.encrypt>> }[] = [];
      for (let i = 0; i < 20; i++)
        sends.push({ id: crypto.randomUUID(), messages: await bob.encrypt(alice.userId, `m${i}`) });
      const refusals: RejectedFrame[] = [];
      socket.on("rejected", (frame) => refusals.push(frame));
      // Twenty at once: the burst of ten passes, the rest are refused and must go again.
      const answers = await Promise.all(sends.map((s) => socket.sendToUser(s.id, alice.userId, s.messages)));
      expect(refusals.filter((r) => r.code === "rate_limited").length).toBeGreaterThan(0);
      expect(answers.map((a) => (a.type === "rejected" ? a.code : a.type))).toEqual(
        sends.map(() => "accepted"),
      );
      await until(() => received.length >= 20, "alice's twenty messages");
      await Bun.sleep(200);
      expect(received.map((m) => m.id).sort()).toEqual(sends.map((s) => s.id).sort());
      inbox.close();
      socket.close();
    } finally {
      alice.close();
      bob.close();
    }
  }, 60_000);

  test("a send past the account's daily storage quota is returned at once with its retryAfterMs", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    try {
      await alice.register(uniqueUsername("alice"), password);
      await bob.register(uniqueUsername("bob"), password);
      const socket = await bob.connect();
      let answer: Awaited<ReturnType<typeof socket.sendToUser>> | undefined;
      let sent = 0;
      for (; sent < 20; sent++) {
        const messages = await bob.encrypt(alice.userId, "x".repeat(30_000));
        answer = await socket.sendToUser(crypto.randomUUID(), alice.userId, messages);
        if (answer.type === "rejected") break;
      }
      expect(answer).toMatchObject({ type: "rejected", code: "rate_limited" });
      expect((answer as RejectedFrame).retryAfterMs).toBeGreaterThan(60_000);
      expect(sent).toBeGreaterThan(0);
      socket.close();
    } finally {
      alice.close();
      bob.close();
    }
  }, 60_000);
});
