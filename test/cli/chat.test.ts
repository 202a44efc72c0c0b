import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { sql } from "drizzle-orm";
import { ClearBoxClient } from "../../src/client/index.ts";
import { startWebClient } from "../../src/webclient/server.ts";
import { freePort } from "../support/free-port.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { runToEnd } from "../support/process.ts";

const CLI = resolve(import.meta.dir, "../../src/cli/main.ts");
const password = "correct horse battery";

/** Runs one CLI command to its end. */
async function run(args: string[], env: Record<string, string> = { CLEARBOX_PASSWORD: password }) {
  const {
    stdout: out,
    stderr: err,
    code,
  } = await runToEnd([process.execPath, "run", CLI, ...args], {
    env: { ...process.env, ...env },
  });
  return { out, err, code };
}

/** An interactive CLI process: lines typed into its stdin, its output searched as it comes. */
class Terminal {
  output = "";
  private readonly proc: Subprocess<"pipe", "pipe", "pipe">;

  constructor(command: string[], env: Record<string, string | undefined> = { CLEARBOX_PASSWORD: password }) {
    this.proc = Bun.spawn(command, {
      env: { ...process.env, ...env },
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    for (const stream of [this.proc.stdout, this.proc.stderr]) {
      void (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of stream) this.output += decoder.decode(chunk);
      })();
    }
  }

  type(line: string): void {
    this.proc.stdin.write(`${line}\n`);
    this.proc.stdin.flush();
  }

  /** Waits until the output (after `from`) matches; returns the index after the match. */
  async expect(pattern: RegExp, from = 0, ms = 30_000): Promise<number> {
    const deadline = Date.now() + ms;
    for (;;) {
      const match = pattern.exec(this.output.slice(from));
      if (match) return from + match.index + match[0].length;
      if (Date.now() > deadline) throw new Error(`no ${pattern} in output:\n${this.output}`);
      await Bun.sleep(25);
    }
  }

  get exited(): Promise<number> {
    return this.proc.exited;
  }

  end(): void {
    this.proc.stdin.end();
  }

  /** Ctrl-C. */
  interrupt(): void {
    this.proc.kill("SIGINT");
  }
}

describe("CLI chat", () => {
  let node: TestNode;
  let dir: string;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-cli-chat-"));
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("export writes the account's data; erase prints a receipt that verify-receipt accepts", async () => {
    const username = uniqueUsername("leaving");
    const storePath = join(dir, "leaving.db");
    expect((await run(["register", username, "--server", node.url, "--store", storePath])).code).toBe(0);
    const archive = join(dir, "export.json");
    // An earlier file of that name, world-readable: what the export writes into it is the owner's only.
    writeFileSync(archive, "");
    chmodSync(archive, 0o644);
    const exported = await run(["export", "--store", storePath, "--out", archive]);
    expect(exported.code).toBe(0);
    expect(await Bun.file(archive).text()).toContain(username);
    expect(statSync(archive).mode & 0o777).toBe(0o600);
    // The store and the receipt hold personal data too.
    expect(statSync(storePath).mode & 0o777).toBe(0o600);
    const receiptPath = join(dir, "receipt.json");
    const erased = await run(["erase", "--store", storePath, "--out", receiptPath]);
    expect(erased.err).toBe("");
    expect(erased.code).toBe(0);
    expect(statSync(receiptPath).mode & 0o777).toBe(0o600);
    expect(erased.out).toContain("valid: signed with the key");
    const checked = await run(["verify-receipt", receiptPath, "--server", node.url]);
    expect(checked.code).toBe(0);
    // The account is gone: signing in again fails.
    expect(
      (await run(["login", username, "--store", join(dir, "after.db"), "--server", node.url])).code,
    ).toBe(1);
  });

  test("a send the server refuses says why: to an account erased since, send and chat name unknown_recipient", async () => {
    const alice = { name: uniqueUsername("sender"), store: join(dir, "refused-sender.db") };
    const bob = { name: uniqueUsername("gone"), store: join(dir, "refused-gone.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    // Alice's store learns Bob (his id and session), then Bob erases his account.
    const first = await run(["send", bob.name, "hello", "--store", alice.store]);
    expect(first.code).toBe(0);
    expect(first.out).toContain("accepted at");
    expect(
      (await run(["erase", "--store", bob.store, "--out", join(dir, "refused-receipt.json")])).code,
    ).toBe(0);
    const refused = await run(["send", bob.name, "still there?", "--store", alice.store]);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain("not delivered: unknown_recipient: no such account any more");
    const a = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await a.expect(/signed in as/);
    a.type(`/to ${bob.name}`);
    await a.expect(/talking to/);
    a.type("anyone?");
    await a.expect(/! not delivered: "anyone\?": unknown_recipient: no such account any more/);
    a.type("/quit");
    expect(await a.exited).toBe(0);
  });

  test("chat and the browser client on one store share its groups: each lists the groups the other made", async () => {
    const alice = { name: uniqueUsername("both"), store: join(dir, "both-clients.db") };
    const bob = { name: uniqueUsername("invited"), store: join(dir, "both-invited.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const inChat = `chat${Date.now()}`;
    const inPage = `page${Date.now()}`;
    const first = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await first.expect(/signed in as/);
    first.type(`/group new ${inChat} ${bob.name}`);
    await first.expect(/created #/);
    first.type("/quit");
    expect(await first.exited).toBe(0);

    // The browser client's local process (its API only: no page is served here) on the same store.
    const web = await startWebClient({ storePath: alice.store, serverUrl: node.url, assetsDir: dir });
    try {
      const url = new URL(web.url);
      const call = async (method: string, path: string, body?: unknown) => {
        const res = await fetch(new URL(path, url), {
          method,
          headers: {
            "x-clearbox-secret": url.searchParams.get("secret") ?? "",
            ...(body === undefined ? {} : { "content-type": "application/json" }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        expect(res.status).toBe(200);
        return (await res.json()) as { groups?: { name: string }[] };
      };
      expect((await call("GET", "/api/contacts")).groups?.map((g) => g.name)).toEqual([inChat]);
      await call("POST", "/api/groups", { name: inPage, members: [] });
    } finally {
      await web.stop();
    }

    const second = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await second.expect(/signed in as/);
    second.type("/groups");
    await second.expect(new RegExp(`#${inPage}`));
    expect(second.output).toContain(`#${inChat}`);
    second.type("/quit");
    expect(await second.exited).toBe(0);
  });

  test("a chat started while its server cannot be reached says so, instead of staying silent while it retries", async () => {
    const name = uniqueUsername("early");
    const store = join(dir, "unreachable.db");
    expect((await run(["register", name, "--server", node.url, "--store", store])).code).toBe(0);
    // A port nothing listens on (picked free, then closed): the server is down.
    const down = `http://127.0.0.1:${await freePort()}`;
    const t = new Terminal([process.execPath, "run", CLI, "chat", "--store", store, "--server", down]);
    await t.expect(/signed in as/);
    await t.expect(
      new RegExp(`\\* not connected: cannot reach the server at ${down.replace(/\./g, "\\.")}.*; retrying`),
    );
    t.type("/quit");
    expect(await t.exited).toBe(0);
  });

  test("README's form works: npm run cli -- <command> --help", async () => {
    const { stdout: out, code } = await runToEnd(["npm", "run", "--silent", "cli", "--", "chat", "--help"], {
      cwd: resolve(import.meta.dir, "../.."),
    });
    expect(code).toBe(0);
    expect(out).toContain("usage: npm run cli -- chat");
  });

  test("every command answers --help with its own usage", async () => {
    for (const command of [
      "register",
      "login",
      "signin",
      "chat",
      "whoami",
      "keys",
      "send",
      "listen",
      "export",
      "erase",
      "verify-receipt",
    ]) {
      const { out, code } = await run([command, "--help"]);
      expect(code).toBe(0);
      expect(out).toContain(`usage: npm run cli -- ${command}`);
    }
    const chat = await run(["chat", "--help"]);
    expect(chat.out).toContain("/verify <username>");
  });

  test("a failed login and a command without an account write no store file", async () => {
    const storePath = join(dir, "never.db");
    const login = await run(["login", uniqueUsername("ghost"), "--server", node.url, "--store", storePath]);
    expect(login.code).toBe(1);
    expect(login.err).toContain("unauthorized");
    expect(existsSync(storePath)).toBe(false);
    const chat = await run(["chat", "--store", storePath]);
    expect(chat.code).toBe(1);
    expect(chat.err).toContain("run register or login first");
    expect(existsSync(storePath)).toBe(false);
  });

  test("the password prompt does not echo what is typed", async () => {
    const storePath = join(dir, "echo.db");
    const secret = "typed-but-never-shown-42";
    const username = uniqueUsername("echo");
    // `script` gives the CLI a real terminal, whose echo the prompt must switch off.
    const tty = new Terminal(
      [
        "script",
        "-qec",
        `${process.execPath} run ${CLI} register ${username} --server ${node.url} --store ${storePath}`,
        "/dev/null",
      ],
      { CLEARBOX_PASSWORD: undefined },
    );
    const asked = await tty.expect(/password: /);
    tty.type(secret);
    await tty.expect(/password \(again\): /, asked);
    tty.type(secret);
    await tty.expect(/registered and logged in as/);
    tty.end();
    await tty.exited;
    expect(tty.output).not.toContain(secret);
    expect(existsSync(storePath)).toBe(true);
  });

  test("register on a terminal asks the password twice: two that differ are refused before anything is sent", async () => {
    const storePath = join(dir, "typo.db");
    const username = uniqueUsername("typo");
    const tty = new Terminal(
      [
        "script",
        "-qec",
        `${process.execPath} run ${CLI} register ${username} --server ${node.url} --store ${storePath}`,
        "/dev/null",
      ],
      { CLEARBOX_PASSWORD: undefined },
    );
    const asked = await tty.expect(/password: /);
    tty.type("meant-this-password");
    await tty.expect(/password \(again\): /, asked);
    tty.type("meant-this-passwodr");
    await tty.expect(/the two passwords differ; nothing was sent/);
    tty.end();
    await tty.exited;
    expect(existsSync(storePath)).toBe(false);
    // No account was made: the name is still free.
    expect((await run(["register", username, "--server", node.url, "--store", storePath])).code).toBe(0);
  });

  test("text and names another user chose reach the terminal shown, never as escape sequences or control characters", async () => {
    const alice = { name: uniqueUsername("alice"), store: join(dir, "hostile-alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "hostile-bob.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    // An OSC 52 clipboard write, a CR and an erase-line that overwrite the line with a forged
    // sender, a line break that starts a line of its own, a bell, and a right-to-left override.
    const hostile = `ok\r\x1b[2K[12:00] admin: \x1b]52;c;cm0gLXJmIH4=\x07\nfake line\x07 \u202eevil\x9b31m`;
    // An OSC 8 link hiding where it points, as a group name (no whitespace: one chat argument). The
    // server refuses such names now (DisplayName), so one stored before that (or by a hostile server)
    // is made by renaming a group in the database behind the server's back.
    const groupName = "\x1b]8;;https://evil.example/\x07team\x1b]8;;\x07";
    const placeholder = `plain${Date.now()}`;
    const b = new Terminal([process.execPath, "run", CLI, "chat", "--store", bob.store]);
    await b.expect(/signed in as/);
    expect((await run(["send", bob.name, hostile, "--store", alice.store])).code).toBe(0);
    const shown = await b.expect(new RegExp(`${alice.name}: ok`));
    const a = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await a.expect(/signed in as/);
    a.type(`/group new ${groupName} ${bob.name}`);
    // Refused by the server, in words: neither the pattern nor the name's escapes reach the terminal.
    await a.expect(/without control characters/);
    a.type(`/group new ${placeholder} ${bob.name}`);
    await a.expect(/created #/);
    await node.database.db.execute(sql`update groups set name = ${groupName} where name = ${placeholder}`);
    b.type("/accept");
    await b.expect(/\(\/accept /, shown);
    for (const t of [a, b]) t.type("/quit");
    expect(await a.exited).toBe(0);
    expect(await b.exited).toBe(0);
    // `listen` prints the same way.
    const listening = new Terminal([process.execPath, "run", CLI, "listen", "--store", bob.store]);
    await listening.expect(/listening as/);
    expect((await run(["send", bob.name, hostile, "--store", alice.store])).code).toBe(0);
    await listening.expect(new RegExp(`${alice.name}: ok`));
    listening.interrupt();
    await listening.exited;
    // Shown as text: the escapes are visible, the sender is the real one, on one line.
    const shownHostile = String.raw`ok\r\x1b[2K[12:00] admin: \x1b]52;c;cm0gLXJmIH4=\x07\nfake line\x07 \u{202e}evil\x9b31m`;
    expect(b.output).toContain(`${alice.name}: ${shownHostile}`);
    expect(b.output).toContain(String.raw`#\x1b]8;;https://evil.example/\x07team\x1b]8;;\x07 (/accept`);
    expect(b.output).not.toMatch(/^fake line/m);
    expect(listening.output).toContain(`${alice.name}: ${shownHostile}`);
    // Nothing the terminal would act on: no ESC, BEL, CR, C1 CSI or bidi override anywhere.
    expect(a.output).not.toContain("\\u0000");
    for (const output of [a.output, b.output, listening.output]) {
      for (const c of ["\x1b", "\x07", "\r", "\x9b", "\u202e"]) expect(output).not.toContain(c);
    }
  });

  test("a group id the server made up (an earlier client's message carries none to check) reaches listen shown, never as escapes", async () => {
    // A message of an earlier client version names no group inside its encryption, so it is shown
    // in whatever group the server's delivery says; a hostile server (here: a row written into the
    // node's own log) can make that an escape sequence, which `listen` printed as it was.
    const alice = { name: uniqueUsername("alice"), store: join(dir, "old-alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "old-bob.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const sender = ClearBoxClient.open({ serverUrl: node.url, storePath: alice.store });
    try {
      const recipient = await sender.findUser(bob.name);
      const [message] = await sender.encrypt(
        recipient.userId,
        JSON.stringify({ v: 1, t: "text", text: "from before" }),
      );
      if (!message || !sender.userId || !sender.deviceId) throw new Error("alice could not encrypt to bob");
      await node.log.append([
        {
          id: crypto.randomUUID(),
          senderUser: sender.userId,
          senderDevice: sender.deviceId,
          recipientUser: recipient.userId,
          recipientDevice: message.deviceId,
          groupId: "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2K\u202e",
          ts: Date.now(),
          type: message.type,
          body: message.body,
        },
      ]);
    } finally {
      sender.close();
    }
    const listening = new Terminal([process.execPath, "run", CLI, "listen", "--store", bob.store]);
    await listening.expect(new RegExp(`${alice.name} in group .*: from before`));
    listening.interrupt();
    await listening.exited;
    expect(listening.output).toContain(
      String.raw`in group \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2K\u{202e}: from before`,
    );
    for (const c of ["\x1b", "\x07", "\u202e"]) expect(listening.output).not.toContain(c);
  });

  test("two groups with the same name are told apart: a bare name that two share is refused, never resolved to the newest", async () => {
    const alice = { name: uniqueUsername("alice"), store: join(dir, "namesake-alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "namesake-bob.db") };
    const mallory = { name: uniqueUsername("mallory"), store: join(dir, "namesake-mallory.db") };
    for (const u of [alice, bob, mallory]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const chat = (store: string) => new Terminal([process.execPath, "run", CLI, "chat", "--store", store]);
    const a = chat(alice.store);
    const b = chat(bob.store);
    const m = chat(mallory.store);
    for (const t of [a, b, m]) await t.expect(/signed in as/);
    // Bob is in alice's "team"; mallory makes a group of the same name and invites him too.
    a.type(`/group new team ${bob.name}`);
    await a.expect(/created #team/);
    b.type("/accept team");
    let at = await b.expect(/joined #team/);
    m.type(`/group new team ${bob.name}`);
    await m.expect(/created #team/);
    b.type("/accept");
    at = await b.expect(/#team~([0-9a-f]{8}) \(\/accept team~\1 /, at);
    b.type("/accept team");
    at = await b.expect(/joined #team~[0-9a-f]{8}/, at);
    // Each group's messages are labelled with its own group; mallory's group speaks last.
    a.type("from alice's team");
    const fromAlice = new RegExp(`#(team~[0-9a-f]{8}) ${alice.name}: from alice's team`);
    await b.expect(fromAlice, at);
    const aliceTeam = fromAlice.exec(b.output.slice(at))?.[1] as string;
    m.type("from mallory's team");
    const fromMallory = new RegExp(`#(team~[0-9a-f]{8}) ${mallory.name}: from mallory's team`);
    at = await b.expect(fromMallory, at);
    expect(fromMallory.exec(b.output)?.[1]).not.toBe(aliceTeam);
    // "team" names two groups: refused with the labels that tell them apart (it was the group that
    // spoke last, mallory's, which then got what bob wrote for the team).
    b.type("/group team");
    at = await b.expect(/2 groups are named team: \/group team~[0-9a-f]{8} or \/group team~[0-9a-f]{8}/, at);
    b.type(`/group ${aliceTeam}`);
    await b.expect(new RegExp(`talking in #${aliceTeam}`), at);
    b.type("for alice's team only");
    await a.expect(new RegExp(`#team ${bob.name}: for alice's team only`));
    for (const t of [a, b, m]) t.type("/quit");
    for (const t of [a, b, m]) expect(await t.exited).toBe(0);
    expect(m.output).not.toContain("for alice's team only");
  });

  test("an invitation made while the invitee was away is shown when their chat starts", async () => {
    const alice = { name: uniqueUsername("inviter"), store: join(dir, "inviter.db") };
    const bob = { name: uniqueUsername("invitee"), store: join(dir, "invitee.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const a = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await a.expect(/signed in as/);
    a.type(`/group new weekend ${bob.name}`);
    await a.expect(/created #weekend/);
    // Bob was not running a chat: nothing told him. His chat says so when it starts.
    const b = new Terminal([process.execPath, "run", CLI, "chat", "--store", bob.store]);
    const at = await b.expect(/signed in as/);
    await b.expect(/\* invited to #weekend: \/accept <name> to join/, at);
    b.type("/accept weekend");
    await b.expect(/joined #weekend/);
    a.type("see you saturday");
    await b.expect(new RegExp(`#weekend ${alice.name}: see you saturday`));
    // The account's own presence is never announced as a contact's.
    expect(b.output).not.toContain(`${bob.name} is online`);
    expect(a.output).not.toContain(`${alice.name} is online`);
    for (const t of [a, b]) t.type("/quit");
    expect(await a.exited).toBe(0);
    expect(await b.exited).toBe(0);
  });

  test("/verify confirm vouches for the numbers shown: not blindly, and not for a device added since", async () => {
    const alice = { name: uniqueUsername("alice"), store: join(dir, "verify-alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "verify-bob.db") };
    for (const u of [alice, bob]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const a = new Terminal([process.execPath, "run", CLI, "chat", "--store", alice.store]);
    await a.expect(/signed in as/);
    a.type(`/to ${bob.name}`);
    a.type("hello");
    let at = await a.expect(/talking to/);
    // Sent (not queued): alice has a session with bob's device, and numbers to compare.
    for (let i = 0; ; i++) {
      a.type("/history");
      at = await a.expect(/: hello(?: \(queued\))?\n/, at);
      if (!a.output.slice(0, at).endsWith("(queued)\n")) break;
      if (i > 50) throw new Error("hello stayed queued");
      await Bun.sleep(200);
    }
    a.type(`/verify ${bob.name} confirm`);
    at = await a.expect(new RegExp(`compare the numbers first: /verify ${bob.name}`), at);
    a.type(`/verify ${bob.name}`);
    at = await a.expect(new RegExp(`${bob.name} device 1: [0-9 ]{71}`), at);
    // While alice compares, a second device joins bob's account; her next message reaches it.
    const laptop = join(dir, "verify-bob-laptop.db");
    expect((await run(["login", bob.name, "--server", node.url, "--store", laptop])).code).toBe(0);
    a.type("meanwhile");
    for (let i = 0; ; i++) {
      a.type("/history");
      at = await a.expect(/: meanwhile(?: \(queued\))?\n/, at);
      if (!a.output.slice(0, at).endsWith("(queued)\n")) break;
      if (i > 50) throw new Error("the second message stayed queued");
      await Bun.sleep(200);
    }
    a.type(`/verify ${bob.name} confirm`);
    at = await a.expect(/marked verified \(the devices compared\)/, at);
    await a.expect(new RegExp(`${bob.name} device 2: not among the numbers you compared`), at);
    a.type(`/verify ${bob.name}`);
    await a.expect(new RegExp(`${bob.name} device 2: [0-9 ]{71}  \\(CHANGED, not verified\\)`), at);
    a.type("/quit");
    expect(await a.exited).toBe(0);
  });

  test("a new chat session still tells two same-named groups apart: the one that speaks first does not take the name", async () => {
    const alice = { name: uniqueUsername("alice"), store: join(dir, "session-alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "session-bob.db") };
    const mallory = { name: uniqueUsername("mallory"), store: join(dir, "session-mallory.db") };
    for (const u of [alice, bob, mallory]) {
      expect((await run(["register", u.name, "--server", node.url, "--store", u.store])).code).toBe(0);
    }
    const chat = (store: string) => new Terminal([process.execPath, "run", CLI, "chat", "--store", store]);
    // Yesterday: bob joined alice's "team", then accepted mallory's "team" too.
    const a = chat(alice.store);
    const m = chat(mallory.store);
    let b = chat(bob.store);
    for (const t of [a, b, m]) await t.expect(/signed in as/);
    a.type(`/group new team ${bob.name}`);
    await a.expect(/created #team/);
    b.type("/accept team");
    await b.expect(/joined #team/);
    m.type(`/group new team ${bob.name}`);
    await m.expect(/created #team/);
    b.type("/accept");
    const invitation = await b.expect(/#team~[0-9a-f]{8} \(\/accept /);
    const malloryTeam = /#(team~[0-9a-f]{8}) \(\/accept /.exec(b.output)?.[1] as string;
    b.type(`/accept ${malloryTeam}`);
    let at = await b.expect(/joined #team~/, invitation);
    a.type("hello from alice's team");
    at = await b.expect(new RegExp(`${alice.name}: hello from alice's team`), at);
    m.type("hello from mallory's team");
    await b.expect(new RegExp(`${mallory.name}: hello from mallory's team`), at);
    b.type("/quit");
    expect(await b.exited).toBe(0);
    // Today, a new session: mallory's group speaks first. It is not "#team", and "/group team" is
    // refused, not resolved to the only "team" this session had seen (bob's words went to mallory).
    // Then again with a store from before the CLI kept its groups: they come from its history.
    for (const olderStore of [false, true]) {
      if (olderStore) {
        const db = new Database(bob.store);
        db.query("delete from meta where key = 'cli.groups'").run();
        db.close();
      }
      b = chat(bob.store);
      await b.expect(/signed in as/);
      m.type(`from mallory's team ${olderStore}`);
      at = await b.expect(new RegExp(`#${malloryTeam} ${mallory.name}: from mallory's team ${olderStore}`));
      b.type("/group team");
      await b.expect(/2 groups are named team: \/group team~[0-9a-f]{8} or \/group team~[0-9a-f]{8}/, at);
      b.type("/quit");
      expect(await b.exited).toBe(0);
    }
    for (const t of [a, m]) t.type("/quit");
    for (const t of [a, m]) expect(await t.exited).toBe(0);
  });

  test("two users chat in two terminals: messages arrive while typing, by username both ways", async () => {
    const alice = { name: uniqueUsername("alice"), store: join(dir, "alice.db") };
    const bob = { name: uniqueUsername("bob"), store: join(dir, "bob.db") };
    const carol = { name: uniqueUsername("carol"), store: join(dir, "carol.db") };
    for (const u of [alice, bob, carol]) {
      const r = await run(["register", u.name, "--server", node.url, "--store", u.store]);
      expect(r.code).toBe(0);
    }
    const chat = (store: string) => new Terminal([process.execPath, "run", CLI, "chat", "--store", store]);
    const a = chat(alice.store);
    const b = chat(bob.store);
    const c = chat(carol.store);
    for (const t of [a, b, c]) await t.expect(/signed in as/);

    a.type(`/to ${bob.name}`);
    await a.expect(new RegExp(`talking to ${bob.name}`));
    a.type("hello bob");
    await b.expect(new RegExp(`${alice.name}: hello bob`));
    b.type(`/to ${alice.name}`);
    b.type("hi alice, bob here");
    await a.expect(new RegExp(`${bob.name}: hi alice, bob here`));

    // Safety numbers: both see the same digits.
    a.type(`/verify ${bob.name}`);
    const aAt = await a.expect(/device \d+: ((\d{5} ){11}\d{5})/);
    b.type(`/verify ${alice.name}`);
    await b.expect(/device \d+: ((\d{5} ){11}\d{5})/);
    const digits = (out: string) => out.match(/device \d+: ((?:\d{5} ){11}\d{5})/)?.[1];
    expect(digits(a.output.slice(0, aAt))).toBe(digits(b.output));

    // A group of three.
    a.type(`/group new trio ${bob.name} ${carol.name}`);
    await a.expect(/created #trio/);
    // Invited, not yet members: each accepts the invitation (one lists it first).
    b.type("/accept");
    await b.expect(/#trio \(\/accept trio/);
    for (const t of [b, c]) {
      t.type("/accept trio");
      await t.expect(/joined #trio/);
    }
    a.type("hello trio");
    await b.expect(new RegExp(`#trio ${alice.name}: hello trio`));
    await c.expect(new RegExp(`#trio ${alice.name}: hello trio`));
    c.type("/group trio");
    await c.expect(/talking in #trio/);
    c.type("carol in trio");
    await a.expect(new RegExp(`#trio ${carol.name}: carol in trio`));
    await b.expect(new RegExp(`#trio ${carol.name}: carol in trio`));

    // One socket per device: `send` beside a running chat of the same store hands its message to
    // the chat's socket instead of opening a second one (which would close the first, 4409).
    const beside = await run(["send", bob.name, "sent beside the chat", "--store", alice.store]);
    expect(beside.code).toBe(0);
    expect(beside.out).toContain("queued: the ClearBox process");
    await b.expect(new RegExp(`${alice.name}: sent beside the chat`));
    const second = await run(["chat", "--store", alice.store]);
    expect(second.code).toBe(1);
    expect(second.err).toContain("in use by another ClearBox process");
    expect(second.out).not.toContain("signed in as");
    a.type("/devices");
    await a.expect(/device 1 .*\(this one\)|device 1 \(this one\)/);
    for (const t of [a, b, c]) t.type("/quit");
    expect(await a.exited).toBe(0);
    expect(await b.exited).toBe(0);
    expect(await c.exited).toBe(0);
  });
});
