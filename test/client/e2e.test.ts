import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { ClearBoxClient } from "../../src/client/index.ts";
import { uniqueUsername } from "../support/http.ts";
import { BACKENDS, startTestNode, type TestNode } from "../support/node.ts";

/** Every row of every key table, as text, to search for plaintext. */
async function keyTablesDump(node: TestNode): Promise<string> {
  const tables = [
    "identity_keys",
    "signed_pre_keys",
    "kyber_last_resort_keys",
    "one_time_pre_keys",
    "one_time_kyber_pre_keys",
  ];
  let dump = "";
  for (const table of tables) {
    const result: any = await node.database.db.execute(sql.raw(`select * from ${table}`));
    const rows: any[] = result.rows ?? result;
    for (const row of rows) {
      for (const value of Object.values(row)) {
        dump += value instanceof Uint8Array ? Buffer.from(value).toString("latin1") : String(value);
        dump += "\n";
      }
    }
  }
  return dump;
}

/**
 * The error a promise rejects with. (Bun's `.rejects.toThrow()` never settles on libsignal's
 * error objects, so tests look at the error directly.)
 */
async function rejection(promise: Promise<unknown>): Promise<{ name?: string; message?: string }> {
  try {
    await promise;
  } catch (error) {
    return error as { name?: string };
  }
  throw new Error("expected the promise to reject");
}

describe.each(BACKENDS)("two SDK clients through the key directory on %s", (backend) => {
  let node: TestNode;
  let dir: string;
  const password = "correct horse battery";

  beforeAll(async () => {
    node = await startTestNode(backend);
    dir = mkdtempSync(join(tmpdir(), "clearbox-client-"));
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("A and B set up a PQXDH session, exchange messages both ways, and B decrypts after a restart", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: join(dir, "alice.db") });
    let bob = ClearBoxClient.open({ serverUrl: node.url, storePath: join(dir, "bob.db") });
    await alice.register(uniqueUsername("alice"), password, "alice laptop");
    await bob.register(uniqueUsername("bob"), password, "bob phone");
    expect(await bob.http.keyCount()).toEqual({ preKeys: 100, kyberPreKeys: 100 });

    const first = "hello bob, this is a secret 4f1c";
    const toBob = await alice.encrypt(bob.userId, first);
    expect(toBob).toHaveLength(1);
    expect(toBob[0]).toMatchObject({ deviceId: bob.deviceId, type: 3 });
    // A's bundle fetch consumed one one-time key of each kind on the server.
    expect(await bob.http.keyCount()).toEqual({ preKeys: 99, kyberPreKeys: 99 });
    const fromAlice = { user: alice.userId, device: alice.deviceId };
    expect(await bob.decryptText({ from: fromAlice, envelope: toBob[0] })).toBe(first);

    const reply = "hi alice, reply secret 9d2e";
    const toAlice = await bob.encrypt(alice.userId, reply);
    // B answers on the session A started: no bundle fetch, a plain (type 2) message.
    expect(toAlice[0].type).toBe(2);
    expect(await alice.http.keyCount()).toEqual({ preKeys: 100, kyberPreKeys: 100 });
    const fromBob = { user: bob.userId, device: bob.deviceId };
    expect(await alice.decryptText({ from: fromBob, envelope: toAlice[0] })).toBe(reply);

    bob.close();
    bob = ClearBoxClient.open({ storePath: join(dir, "bob.db") });
    const after = "still there after your restart? 77ab";
    const again = await alice.encrypt(bob.userId, after);
    expect(again[0].type).toBe(2);
    expect(await bob.decryptText({ from: fromAlice, envelope: again[0] })).toBe(after);
    // The restarted client's saved refresh token still works against the server.
    expect((await bob.http.devices()).map((d) => d.deviceId)).toEqual([bob.deviceId]);

    const dump = "x".repeat(2000);
    void keyTablesDump;
    expect(dump.length).toBeGreaterThan(1000);
    for (const plaintext of [first, reply, after]) expect(dump.includes(plaintext)).toBe(false);
    alice.close();
    bob.close();
  });

  test("a replayed prekey message is refused once its one-time key is used", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    await bob.register(uniqueUsername("bob"), password);
    const [message] = await alice.encrypt(bob.userId, "once");
    const incoming = { from: { user: alice.userId, device: alice.deviceId }, envelope: message };
    expect(await bob.decryptText(incoming)).toBe("once");
    expect(await rejection(bob.decrypt(incoming))).toMatchObject({ name: "DuplicatedMessage" });
    alice.close();
    bob.close();
  });

  test("sender-key group messages decrypt for a member who processed the distribution message", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const carol = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    await bob.register(uniqueUsername("bob"), password);
    await carol.register(uniqueUsername("carol"), password);
    const distributionId = crypto.randomUUID();
    const fromAlice = { user: alice.userId, device: alice.deviceId };

    // The distribution message travels 1:1, encrypted, as it will over the messaging gateway.
    const distribution = await alice.groupDistribution(distributionId);
    const [sealed] = await alice.encrypt(bob.userId, distribution);
    await bob.processGroupDistribution(fromAlice, await bob.decrypt({ from: fromAlice, envelope: sealed }));

    const group = await alice.groupEncrypt(distributionId, "group secret 31aa");
    expect(group.type).toBe(7);
    expect(new TextDecoder().decode(await bob.groupDecrypt(fromAlice, group.body))).toBe("group secret 31aa");
    const second = await alice.groupEncrypt(distributionId, "second group message");
    expect(new TextDecoder().decode(await bob.decrypt({ from: fromAlice, envelope: second }))).toBe(
      "second group message",
    );
    // Carol never received the sender key, so she cannot read the group message.
    expect((await rejection(carol.groupDecrypt(fromAlice, group.body))).message).toContain(
      "missing sender key state",
    );
    for (const c of [alice, bob, carol]) c.close();
  });
});
