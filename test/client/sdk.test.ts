import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ClearBoxClient } from "../../src/client/index.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { runToEnd } from "../support/process.ts";

const password = "correct horse battery";

/** The HTTP status a call was refused with. */
async function apiStatus(call: Promise<unknown>): Promise<number | undefined> {
  try {
    await call;
  } catch (error) {
    return (error as { status?: number }).status;
  }
  return undefined;
}
const CLI = resolve(import.meta.dir, "../../src/cli/main.ts");

// The SDK talks HTTP only, so one backend is enough here; the key directory suites cover both.
describe("client SDK and CLI", () => {
  let node: TestNode;
  let dir: string;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-sdk-"));
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("replenishKeys tops up a kind that fell under the threshold and leaves a full one alone", async () => {
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await bob.register(uniqueUsername("bob"), password);
    expect(await bob.replenishKeys()).toEqual({ preKeys: false, kyberPreKeys: false });
    await bob.bootstrapKeys(5);
    expect(await bob.http.keyCount()).toEqual({ preKeys: 5, kyberPreKeys: 5 });
    expect(await bob.replenishKeys()).toEqual({ preKeys: true, kyberPreKeys: true });
    expect(await bob.http.keyCount()).toEqual({ preKeys: 100, kyberPreKeys: 100 });

    // A session started from a replenished key still decrypts: the private halves were stored first.
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    const [message] = await alice.encrypt(bob.userId, "after replenish");
    expect(
      await bob.decryptText({ from: { user: alice.userId, device: alice.deviceId }, envelope: message }),
    ).toBe("after replenish");
    alice.close();
    bob.close();
  });

  test("a user's second device gets its own ciphertext, and the sender skips its own device", async () => {
    const username = uniqueUsername("bob");
    const phone = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await phone.register(username, password);
    const laptop = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await laptop.login(username, password, "laptop");
    expect(laptop.deviceId).not.toBe(phone.deviceId);

    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    const messages = await alice.encrypt(phone.userId, "to both devices");
    expect(messages.map((m) => m.deviceId).sort()).toEqual([phone.deviceId, laptop.deviceId].sort());
    const from = { user: alice.userId, device: alice.deviceId };
    for (const device of [phone, laptop]) {
      const mine = messages.find((m) => m.deviceId === device.deviceId);
      expect(mine).toBeDefined();
      if (mine) expect(await device.decryptText({ from, envelope: mine })).toBe("to both devices");
    }
    // Syncing to its own account, the laptop encrypts for the phone only.
    const sync = await laptop.encrypt(laptop.userId, "note to self");
    expect(sync.map((m) => m.deviceId)).toEqual([phone.deviceId]);
    for (const c of [phone, laptop, alice]) c.close();
  });

  test("a username taken again after its account was erased names the new account, never the erased one's verified keys", async () => {
    const name = uniqueUsername("bob");
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await alice.register(uniqueUsername("alice"), password);
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await bob.register(name, password);
    // Alice writes to bob and verifies his safety number.
    const [hello] = await alice.encrypt((await alice.findUser(name)).userId, "hello bob");
    await bob.decryptText({ from: { user: alice.userId, device: alice.deviceId }, envelope: hello });
    alice.markVerified(bob.userId);
    expect(alice.trustOf(bob.userId)).toEqual({ verified: true, changed: false });
    // Bob erases his account; someone else registers his username.
    const { erasureId } = await bob.http.eraseMe(password);
    while ((await bob.http.erasure(erasureId)).status !== "done") await Bun.sleep(50);
    bob.close();
    const mallory = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await mallory.register(name, password);
    // Mallory writes to alice: alice's Messenger names the sender with usernameOf.
    expect(await alice.usernameOf(mallory.userId)).toBe(name);
    // The name now resolves to the account writing under it, whose keys alice never verified.
    const found = await alice.findUser(name);
    expect(found.userId).toBe(mallory.userId);
    expect(alice.trustOf(found.userId).verified).toBe(false);
    expect(alice.contacts().filter((c) => c.username === name)).toEqual([
      { userId: mallory.userId, username: name },
    ]);
    alice.close();
    mallory.close();
  });

  test("a store holding one account refuses to sign another in, before asking the server", async () => {
    const bobName = uniqueUsername("bob");
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    await bob.register(bobName, password);
    const storePath = join(dir, "one-account.db");
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath });
    const aliceName = uniqueUsername("alice");
    await alice.register(aliceName, password);
    const aliceId = alice.userId;
    // Logging bob in here made his device 2 with alice's identity key and no keys on the server.
    await expect(alice.login(bobName, password)).rejects.toThrow(
      `this store holds the account ${aliceName}: use another store for ${bobName}`,
    );
    expect((await bob.http.devices()).map((d) => d.deviceId)).toEqual([bob.deviceId]);
    // Registering another account here created it on the server first.
    const carolName = uniqueUsername("carol");
    await expect(alice.register(carolName, password)).rejects.toThrow(`use another store for ${carolName}`);
    expect(await apiStatus(bob.http.lookupUser(carolName))).toBe(404);
    // The store is alice's as it was, and logs her in again as the same device.
    expect(alice.userId).toBe(aliceId);
    await alice.login(aliceName, password);
    expect([alice.userId, alice.deviceId]).toEqual([aliceId, 1]);
    alice.close();
    bob.close();
  });

  test("the CLI registers, shows the account and key count, and logs in again as the same device", async () => {
    const storePath = join(dir, "cli.db");
    const username = uniqueUsername("cli");
    const run = async (...args: string[]) => {
      const {
        stdout: out,
        stderr: err,
        code,
      } = await runToEnd([process.execPath, "run", CLI, ...args, "--store", storePath], {
        env: { ...process.env, CLEARBOX_PASSWORD: password },
      });
      return { out, err, code };
    };
    const registered = await run("register", username, "--server", node.url);
    expect(registered).toMatchObject({ code: 0, err: "" });
    expect(registered.out).toMatch(/^registered and logged in as .* device 1$/m);
    const keys = await run("keys");
    expect(keys.out).toContain("100 EC, 100 Kyber");
    const again = await run("login", username);
    expect(again.out).toMatch(/^logged in as .* device 1$/m);
    const whoami = await run("whoami");
    expect(whoami.out).toContain(node.url);
    const wrong = await run("nonsense");
    expect(wrong.code).toBe(2);
  });
});
