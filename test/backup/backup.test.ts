import { afterAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { eq } from "drizzle-orm";
import { accounts } from "../../src/db/schema.ts";
import { ErasureLedger } from "../../src/gdpr/ledger.ts";
import { runPrefix, stackEnv } from "../support/cluster-env.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";
import { type Finished, runToEnd } from "../support/process.ts";
import { ackOf, TestSocket } from "../support/ws.ts";

const ROOT = resolve(import.meta.dir, "../..");
const b64 = (text: string) => Buffer.from(text).toString("base64");

/**
 * Runs the backup CLI (`npm run backup` / `npm run restore`) in its own process, without blocking
 * this one (the node it calls runs in this process).
 */
async function cli(args: string[], env: Record<string, string> = {}): Promise<Finished> {
  return runToEnd([process.execPath, "run", "src/backup/cli.ts", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
  });
}

async function waitFor<T>(read: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

describe("backup and restore of the embedded default", () => {
  const scratch = mkdtempSync(join(tmpdir(), "clearbox-backup-test-"));
  // The erasure ledger lives outside DATA_DIR and outside the backups, as the docs say it must.
  const ledgerFile = join(scratch, "ledger", "erasure-ledger");
  const env = { ERASURE_LEDGER_FILE: ledgerFile, BACKUP_DIR: join(scratch, "backups") };
  const nodes: TestNode[] = [];
  afterAll(async () => {
    for (const node of nodes) await node.teardown();
    rmSync(scratch, { recursive: true, force: true });
  });

  test("an online snapshot restored into a fresh node: a user logs in and gets their pending messages; an account erased after the backup does not come back", async () => {
    const original = await startTestNode("pglite", { env });
    nodes.push(original);
    const client = api(original.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const carol = await registerAndLogin(client);
    const send = async (socket: TestSocket, to: string, text: string) => {
      const id = randomUUID();
      socket.send({
        type: "send",
        id,
        to: { user: to },
        messages: [{ deviceId: 1, type: 3, body: b64(text) }],
      });
      expect((await socket.reply(id, 30_000)).type).toBe("accepted");
      return id;
    };
    // Bob is offline: two messages from Alice and one from Carol wait for him.
    const aliceSocket = await TestSocket.open(original.url, alice.accessToken);
    const carolSocket = await TestSocket.open(original.url, carol.accessToken);
    const beforeBackup = [
      await send(aliceSocket, bob.userId, "one"),
      await send(aliceSocket, bob.userId, "two"),
    ];
    const fromCarol = await send(carolSocket, bob.userId, "from carol");

    // The online snapshot, through the npm command, while the node runs and its sockets are open.
    const backup = await cli(["backup", "--admin-url", original.adminUrl], { ADMIN_TOKEN });
    expect(backup.stderr).toBe("");
    expect(backup.code).toBe(0);
    const manifest = JSON.parse(backup.stdout) as {
      path: string;
      name: string;
      files: Record<string, unknown>;
    };
    expect(manifest.path.startsWith(join(scratch, "backups"))).toBe(true);
    expect(Object.keys(manifest.files).sort()).toEqual(["envelopes.db", "pglite.tar.gz"]);
    expect(readdirSync(join(scratch, "backups"))).toEqual([manifest.name]);
    // Every account and queued envelope: the backup's files are the owner's only, as the store's.
    for (const file of readdirSync(manifest.path)) {
      expect({ file, mode: statSync(join(manifest.path, file)).mode & 0o777 }).toEqual({ file, mode: 0o600 });
    }

    // After the backup: one more message (not in the backup), and Carol erases herself.
    const afterBackup = await send(aliceSocket, bob.userId, "three");
    const erasure = await client.call("DELETE", "/v1/me", {
      token: carol.accessToken,
      body: { password: carol.password },
    });
    expect(erasure.status).toBe(202);
    await waitFor(async () => {
      const res = await client.get(`/v1/erasures/${erasure.body.erasureId}`);
      return res.body.status === "done" ? true : undefined;
    }, "Carol's erasure");
    expect(readFileSync(ledgerFile, "utf8")).toContain(ErasureLedger.key(carol.userId));
    expect(readFileSync(ledgerFile, "utf8")).not.toContain(carol.userId);
    // docs/GDPR.md, "What a receipt proves": an operator checks the ledger from the user id in a shell.
    const recipe = await runToEnd([
      "sh",
      "-c",
      `printf 'clearbox-erased-account:%s' ${carol.userId} | sha256sum`,
    ]);
    expect(
      readFileSync(ledgerFile, "utf8")
        .split("\n")
        .map((line) => line.split(" ")[0]),
    ).toContain(recipe.stdout.split(" ")[0]);
    await Promise.all([aliceSocket.close(), carolSocket.close().catch(() => undefined)]);
    await original.stop();
    nodes.splice(nodes.indexOf(original), 1);
    rmSync(original.dataDir, { recursive: true, force: true });

    // A damaged copy is refused; so is a data directory that is not empty.
    const damaged = join(scratch, "damaged");
    cpSync(manifest.path, damaged, { recursive: true });
    appendFileSync(join(damaged, "envelopes.db"), "x");
    const refusedDamaged = await cli(["restore", damaged, "--data-dir", join(scratch, "unused")]);
    expect(refusedDamaged.code).toBe(1);
    expect(refusedDamaged.stderr).toContain("envelopes.db does not match its checksum");
    expect(existsSync(join(scratch, "unused", "pglite"))).toBe(false);

    // Without the ledger in place the restore says so (it succeeds: an empty ledger may be right).
    const unledgered = await cli(["restore", manifest.path, "--data-dir", join(scratch, "unledgered")], {
      ERASURE_LEDGER_FILE: "",
    });
    expect(unledgered.code).toBe(0);
    expect(unledgered.stderr).toContain(
      `note: the erasure ledger ${join(scratch, "unledgered", "erasure-ledger")} is missing or empty`,
    );
    // README's restore: ERASURE_LEDGER_FILE and DATA_DIR exported for the restore and the start.
    const dataDir = join(scratch, "restored");
    // A backup an earlier version left 0644: the restored log is still the owner's only.
    chmodSync(join(manifest.path, "envelopes.db"), 0o644);
    const restored = await cli(["restore", manifest.path], {
      ERASURE_LEDGER_FILE: ledgerFile,
      DATA_DIR: dataDir,
    });
    expect(restored.stderr).toBe("");
    expect(restored.code).toBe(0);
    expect(statSync(join(dataDir, "envelopes.db")).mode & 0o777).toBe(0o600);
    const again = await cli(["restore", manifest.path, "--data-dir", dataDir]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("restore into an empty directory");

    // A fresh node on the restored directory, with the same ledger.
    const node = await startTestNode("pglite", { env, dataDir });
    nodes.push(node);
    const fresh = api(node.url);
    // Carol's account came back with the backup and was erased again before the listeners opened.
    expect(node.logs.join("")).toContain("erased accounts found in the database; erasing them again");
    expect(await node.database.db.select().from(accounts).where(eq(accounts.id, carol.userId))).toEqual([]);
    expect(
      (await fresh.post("/v1/sessions", { username: carol.username, password: carol.password, deviceId: 1 }))
        .status,
    ).toBe(401);
    expect(await node.log.metadataOf(carol.userId)).toEqual([]);

    // Bob signs in on his device and gets what was pending at the backup, in order, and nothing of Carol's.
    const session = await fresh.post("/v1/sessions", {
      username: bob.username,
      password: bob.password,
      deviceId: 1,
    });
    expect(session.status).toBe(201);
    const bobSocket = await TestSocket.open(node.url, session.body.accessToken);
    const received = await bobSocket.messages(2, 30_000);
    expect(received.map((m) => m.id)).toEqual(beforeBackup);
    expect(received.map((m) => Buffer.from(m.envelope.body, "base64").toString())).toEqual(["one", "two"]);
    bobSocket.send(ackOf(received));
    // Nothing else arrives: Carol's message went with her, the post-backup one was never in the backup.
    const ping = bobSocket.next((f) => f.type === "pong", 30_000);
    bobSocket.send({ type: "ping" });
    await ping;
    expect(bobSocket.pendingMessages()).toEqual([]);
    expect(JSON.stringify(bobSocket.frames)).not.toContain(fromCarol);
    expect(JSON.stringify(bobSocket.frames)).not.toContain(afterBackup);

    // Alice still works: signs in and sends.
    const aliceAgain = await fresh.post("/v1/sessions", {
      username: alice.username,
      password: alice.password,
      deviceId: 1,
    });
    expect(aliceAgain.status).toBe(201);
    const aliceSocket2 = await TestSocket.open(node.url, aliceAgain.body.accessToken);
    const id = await send(aliceSocket2, bob.userId, "after restore");
    expect((await bobSocket.messages(1, 30_000))[0].id).toBe(id);
    await Promise.all([aliceSocket2.close(), bobSocket.close()]);
  });

  test("a start with an empty erasure ledger beside a database that holds erasure jobs says the ledger is lost; with its own ledger it does not", async () => {
    const kept = join(scratch, "kept-ledger", "erasure-ledger");
    const first = await startTestNode("pglite", { env: { ERASURE_LEDGER_FILE: kept } });
    nodes.push(first);
    const client = api(first.url);
    const leaving = await registerAndLogin(client);
    const erasure = await client.call("DELETE", "/v1/me", {
      token: leaving.accessToken,
      body: { password: leaving.password },
    });
    expect(erasure.status).toBe(202);
    await waitFor(async () => {
      const res = await client.get(`/v1/erasures/${erasure.body.erasureId}`);
      return res.body.status === "done" ? true : undefined;
    }, "the erasure");
    await first.stop();
    nodes.splice(nodes.indexOf(first), 1);
    const lost = "the erasure ledger lists no erasure but the database holds erasure jobs";

    // The same database with its own ledger: nothing to say.
    const same = await startTestNode("pglite", {
      env: { ERASURE_LEDGER_FILE: kept },
      dataDir: first.dataDir,
    });
    nodes.push(same);
    expect(same.logs.join("")).toContain("clearbox node started");
    expect(same.logs.join("")).not.toContain(lost);
    await same.stop();
    nodes.splice(nodes.indexOf(same), 1);

    // A new, empty ledger (what a restore into a new DATA_DIR with the default path gets): said, once, at error level.
    const fresh = join(scratch, "fresh-ledger", "erasure-ledger");
    const node = await startTestNode("pglite", {
      env: { ERASURE_LEDGER_FILE: fresh },
      dataDir: first.dataDir,
    });
    nodes.push(node);
    const lines = node.logs
      .join("")
      .split("\n")
      .filter((line) => line.includes(lost))
      .map((line) => JSON.parse(line) as { level: number; ledger: string; erasureJobs: number });
    expect(lines).toEqual([expect.objectContaining({ level: 50, ledger: fresh, erasureJobs: 1 })]);
  });

  test("a damaged erasure ledger stops the start (holding nothing open) instead of being half replayed", async () => {
    const ledger = new ErasureLedger(join(scratch, "other-ledger"));
    expect(ledger.keys().size).toBe(0);
    ledger.record(randomUUID());
    expect(ledger.keys().size).toBe(1);
    writeFileSync(ledger.path, `${readFileSync(ledger.path, "utf8")}not a ledger line\n`);
    expect(() => ledger.keys()).toThrow(/line 2 is not/);
    await expect(startTestNode("pglite", { env: { ERASURE_LEDGER_FILE: ledger.path } })).rejects.toThrow(
      /erasure ledger .* line 2/,
    );
  });
});

describe("backup and restore of the services stack (pg_dump, pg_restore, a broker whose queues are lost)", () => {
  const scratch = mkdtempSync(join(tmpdir(), "clearbox-pgdump-test-"));
  const ledgerFile = join(scratch, "erasure-ledger");
  const databases: TestDatabase[] = [];
  const nodes: TestNode[] = [];
  afterAll(async () => {
    for (const node of nodes) await node.teardown();
    for (const database of databases) await database.drop();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** Runs a PostgreSQL client tool without blocking this process; fails the test on a non-zero exit. */
  async function pgTool(args: string[]): Promise<void> {
    const proc = Bun.spawn(args, { stdout: "pipe", stderr: "pipe" });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  }

  test("pg_restore into a new database, a new broker, --requeue: a user logs in and gets their queued messages; an erased account does not come back", async () => {
    const before = await createTestDatabase();
    databases.push(before);
    const original = await startTestNode("postgres", {
      database: before,
      env: { ...stackEnv("services", runPrefix()), ERASURE_LEDGER_FILE: ledgerFile },
    });
    nodes.push(original);
    const client = api(original.url);
    const alice = await registerAndLogin(client);
    const bob = await registerAndLogin(client);
    const carol = await registerAndLogin(client);
    const send = async (from: string, to: string, text: string) => {
      const socket = await TestSocket.open(original.url, from);
      const id = randomUUID();
      socket.send({
        type: "send",
        id,
        to: { user: to },
        messages: [{ deviceId: 1, type: 3, body: b64(text) }],
      });
      expect((await socket.reply(id, 30_000)).type).toBe("accepted");
      await socket.close();
      return id;
    };
    const one = await send(alice.accessToken, bob.userId, "one");
    await send(carol.accessToken, bob.userId, "from carol");
    // Bob is offline: both wait in his RabbitMQ queue (and the log marks them queued).
    await waitFor(
      async () => ((await original.offline.depth(bob.userId, 1)) === 2 ? true : undefined),
      "both envelopes in Bob's offline queue",
    );

    const dump = join(scratch, "clearbox.dump");
    await pgTool(["pg_dump", "--format=custom", `--file=${dump}`, before.url]);

    // After the dump, Carol erases herself: the ledger keeps it.
    const erasure = await client.call("DELETE", "/v1/me", {
      token: carol.accessToken,
      body: { password: carol.password },
    });
    expect(erasure.status).toBe(202);
    await waitFor(async () => {
      const res = await client.get(`/v1/erasures/${erasure.body.erasureId}`);
      return res.body.status === "done" ? true : undefined;
    }, "Carol's erasure");
    // The disaster: the node, its database and its broker's queues are gone.
    await original.teardown();
    nodes.splice(nodes.indexOf(original), 1);

    const after = await createTestDatabase();
    databases.push(after);
    await pgTool(["pg_restore", "--no-owner", `--dbname=${after.url}`, dump]);
    const requeue = await cli(["restore", "--requeue", "--database-url", after.url]);
    expect(requeue.stderr).toBe("");
    expect(requeue.code).toBe(0);
    expect(JSON.parse(requeue.stdout)).toEqual({ requeued: 2 });

    // A new node, a new (empty) broker namespace, the same ledger.
    const node = await startTestNode("postgres", {
      database: after,
      env: { ...stackEnv("services", runPrefix()), ERASURE_LEDGER_FILE: ledgerFile },
    });
    nodes.push(node);
    expect(node.logs.join("")).toContain("erased accounts found in the database; erasing them again");
    const fresh = api(node.url);
    expect(
      (await fresh.post("/v1/sessions", { username: carol.username, password: carol.password, deviceId: 1 }))
        .status,
    ).toBe(401);
    const session = await fresh.post("/v1/sessions", {
      username: bob.username,
      password: bob.password,
      deviceId: 1,
    });
    expect(session.status).toBe(201);
    const bobSocket = await TestSocket.open(node.url, session.body.accessToken);
    const [received] = await bobSocket.messages(1, 30_000);
    expect(received.id).toBe(one);
    expect(Buffer.from(received.envelope.body, "base64").toString()).toBe("one");
    bobSocket.send(ackOf([received]));
    const pong = bobSocket.next((f) => f.type === "pong", 30_000);
    bobSocket.send({ type: "ping" });
    await pong;
    expect(bobSocket.pendingMessages()).toEqual([]);
    await bobSocket.close();
  });
});

describe("online snapshots on the services stack", () => {
  let node: TestNode | undefined;
  afterAll(() => node?.teardown());

  test("are refused with a pointer to pg_dump: PostgreSQL is backed up with its own tools", async () => {
    node = await startTestNode("postgres");
    const res = await fetch(`${node.adminUrl}/admin/v1/backups`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(400);
    expect(await res.text()).toContain("back them up with their own tools");
  });

  test("the backup command needs the admin token", async () => {
    const run = await cli(["backup", "--admin-url", "http://127.0.0.1:9"], {
      ADMIN_TOKEN: "",
      ADMIN_TOKEN_FILE: "",
    });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("no admin token");
  });
});

describe("the backup command when the node refuses its token", () => {
  const nodes: TestNode[] = [];
  afterAll(async () => {
    for (const node of nodes) await node.teardown();
  });

  test("says what to do: a node started without ADMIN_TOKEN is restarted with one, a wrong token is named as such", async () => {
    // `npm start` as README's first command runs without ADMIN_TOKEN; its admin RPC refuses every call.
    const bare = await startTestNode("pglite", { env: { ADMIN_TOKEN: "" } });
    nodes.push(bare);
    const disabled = await cli(["backup", "--admin-url", bare.adminUrl], { ADMIN_TOKEN: "x".repeat(24) });
    expect(disabled.code).toBe(1);
    expect(disabled.stderr).toContain("backup refused: 401 unauthorized: admin RPC is disabled");
    expect(disabled.stderr).toContain(
      "restart the node with ADMIN_TOKEN set, and give this command the same value",
    );
    expect(disabled.stderr).not.toContain('{"error"');

    const keyed = await startTestNode("pglite");
    nodes.push(keyed);
    const wrong = await cli(["backup", "--admin-url", keyed.adminUrl], { ADMIN_TOKEN: "y".repeat(24) });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("backup refused: 401 unauthorized: missing or wrong admin token");
    expect(wrong.stderr).toContain("is not the node's ADMIN_TOKEN");
    // Nothing was written: no snapshot directory under either node's BACKUP_DIR.
    for (const node of [bare, keyed]) expect(existsSync(join(node.dataDir, "backups"))).toBe(false);
  });
});
