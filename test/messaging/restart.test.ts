import { describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { runPrefix, STACKS, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { type Backend, startTestNode } from "../support/node.ts";
import { createTestDatabase } from "../support/postgres.ts";
import { ackOf, messagesBeforeMarker, TestSocket } from "../support/ws.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");

describe.each(STACKS)("a server restart on the %s stack", (stack) => {
  test("loses nothing accepted: queued and unacked messages arrive after the restart, in order", async () => {
    const prefix = runPrefix();
    const backend: Backend = stack === "embedded" ? "pglite" : "postgres";
    const database = backend === "postgres" ? await createTestDatabase() : undefined;
    const env = stackEnv(stack, prefix);
    const first = await startTestNode(backend, { env, database, keepData: true });
    const client = api(first.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);

    // Bob gets three live and acks none, then goes away; ten more are sent while he is offline.
    const b = await TestSocket.open(first.url, bob.accessToken);
    const a = await TestSocket.open(first.url, alice.accessToken);
    const ids: string[] = [];
    const send = async (n: number) => {
      const id = randomUUID();
      ids.push(id);
      a.send({
        type: "send",
        id,
        to: { user: bob.userId },
        messages: [{ deviceId: 1, type: 3, body: b64(`#${n}`) }],
      });
      expect((await a.reply(id)).type).toBe("accepted");
    };
    for (let i = 0; i < 3; i++) await send(i);
    expect((await b.messages(3)).map((m) => m.id)).toEqual(ids);
    await b.close();
    for (let i = 3; i < 13; i++) await send(i);
    await a.close();
    await first.stop();

    const second = await startTestNode(backend, { env, database, dataDir: first.dataDir });
    try {
      const again = await TestSocket.open(second.url, bob.accessToken);
      const got = await again.messages(13);
      expect(got.map((m) => m.id)).toEqual(ids);
      expect(got.map((m) => Buffer.from(m.envelope.body, "base64").toString())).toEqual(
        ids.map((_, i) => `#${i}`),
      );
      again.send(ackOf(got));
      await Bun.sleep(300);
      await again.close();
      const third = await TestSocket.open(second.url, bob.accessToken);
      // A redelivery would come from the queue or the log, before a live message sent now.
      const alice2 = await TestSocket.open(second.url, alice.accessToken);
      expect(await messagesBeforeMarker(alice2, bob.userId, [third])).toEqual([[]]);
      await Promise.all([third.close(), alice2.close()]);
    } finally {
      await second.teardown();
      await database?.drop();
      rmSync(first.dataDir, { recursive: true, force: true });
    }
  });
});
