import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { read } from "read";
import { ClearBoxApiError, ClearBoxClient, ClearBoxHttp, Messenger } from "../client/index.ts";
import { passwordProblem } from "../protocol/accounts.ts";
import { checkReceipt } from "../protocol/erasure-receipt.ts";
import { CHAT_HELP, chat, describeRefusal } from "./chat.ts";
import { writePrivateFile } from "./private-file.ts";
import { printable } from "./terminal.ts";

const USAGE = `ClearBox CLI

usage: npm run cli -- <command> [options]     (or: npx bun run src/cli/main.ts <command> [options])

commands:
  register <username>        create an account, log this device in, upload keys
  login <username>           log in (this store's device, or a new one) and upload keys if needed
  signin                     sign in with the organisation's identity provider: open the printed
                             address on any device and enter the code (OAuth device grant)
  chat                       interactive chat: /to <username>, /group, /invite, /verify, /quit ...
  export [--out <file>]      write what the server holds about this account to a JSON file
  erase [--out <file>]       erase the account (asks the password), print and check the receipt
  whoami                     show the account and device of this store
  keys [--replenish]         one-time keys left on the server; top them up when low
  send <username> <text...>  send one message (queued until the server has it) and exit
  listen                     print incoming messages as they arrive; reconnects by itself
  verify-receipt <file> --server <url> [--ca <file>]
                             check an erasure receipt against the key <url> publishes
  <command> --help           what a command does and its options

options:
  --server <url>             ClearBox node for this run (default: the one saved in the store, else
                             http://127.0.0.1:8080); saved in the store by register, login and signin
  --store <path>             this account's key store (default: ./clearbox.db); a new file is
                             written only once register, login or signin succeeded
  --device-name <name>       name of a newly created device
  --ca <file>                PEM CA certificate(s) to trust for an https server, instead of the
                             system's (or NODE_EXTRA_CA_CERTS=<file> to add to the system's)
  password: $CLEARBOX_PASSWORD, else asked on the terminal without echo`;

const STORE_OPTIONS = `  --store <path>             the account's key store (default: ./clearbox.db)
  --server <url>             ClearBox node for this run (default: the one saved in the store by the
                             last register, login or signin, which save the one they used)
  --ca <file>                PEM CA certificate(s) to trust for an https server`;

/** `<command> --help`: each command's own usage. */
const COMMAND_HELP: Record<string, string> = {
  register: `usage: npm run cli -- register <username> [--server <url>] [--store <path>] [--device-name <name>]

Creates the account <username> (3-32 of a-z 0-9 _ . -), logs this device in and uploads its keys.
The password (8-256 characters) is read without echo, twice on a terminal (or from
$CLEARBOX_PASSWORD). The store file is written only once this succeeded.
${STORE_OPTIONS}`,
  login: `usage: npm run cli -- login <username> [--server <url>] [--store <path>] [--device-name <name>]

Logs in as this store's device, or as a new device with a fresh identity when the store holds no
account yet; a store of another account is refused (one account per store: use another --store).
The password is read without echo (or from $CLEARBOX_PASSWORD).
${STORE_OPTIONS}`,
  signin: `usage: npm run cli -- signin [--server <url>] [--store <path>] [--device-name <name>]

Signs in with the organisation's identity provider: open the printed address on any device and
enter the code shown (OAuth 2.0 device authorization grant, RFC 8628).
${STORE_OPTIONS}`,
  chat: `usage: npm run cli -- chat [--store <path>]

An interactive session of this store's account: messages arrive while you type, sends made while
the connection is down are queued and go out when it is back.

${"CHAT_HELP"}
${STORE_OPTIONS}`,
  whoami: `usage: npm run cli -- whoami [--store <path>]

Shows the username, user id, device and server of this store.`,
  keys: `usage: npm run cli -- keys [--replenish] [--store <path>]

Shows how many one-time prekeys (EC and Kyber) the server still holds for this device; with
--replenish, uploads a fresh batch of a kind that fell under 20.
${STORE_OPTIONS}`,
  send: `usage: npm run cli -- send <username> <text...> [--store <path>]

Encrypts <text> for every device of <username>, sends it, and exits once the server accepted it
(exit 1 if it was refused).
${STORE_OPTIONS}`,
  listen: `usage: npm run cli -- listen [--store <path>]

Prints incoming messages (sender's username, group, time) as they arrive, until Ctrl-C. Reconnects
by itself after a network drop or a server restart.
${STORE_OPTIONS}`,
  export: `usage: npm run cli -- export [--out <file>] [--store <path>]

Downloads everything the server holds about this account (GET /v1/me/export, GDPR Art. 15 and 20)
and writes it as JSON to <file> (default: clearbox-export-<username>.json).
${STORE_OPTIONS}`,
  erase: `usage: npm run cli -- erase [--out <file>] [--store <path>]

Erases this account on the server (DELETE /v1/me) after asking for its password (without echo),
waits for the erasure to finish, checks the signed receipt against the key the server publishes,
prints it and writes it to <file> (default: erasure-receipt-<erasureId>.json), which
verify-receipt checks again later. The local store is left as it is: delete it yourself.
${STORE_OPTIONS}`,
  "verify-receipt": `usage: npm run cli -- verify-receipt <file> --server <url> [--ca <file>]

Checks an erasure receipt (the receipt JSON, or the whole answer of GET /v1/erasures/<id>) against
the key <url> publishes: its public key must be the server's, and its Ed25519 signature must verify
over the RFC 8785 bytes of its payload. Needs no account; touches no store.
Exit 0 valid, 1 invalid (names the failed check), 2 bad usage, an unreadable file, or a server that
cannot be asked.`,
};

/**
 * One line read without echo after `prompt` (on stderr). On a terminal the line is then ended:
 * `read` mutes the Enter's newline with the rest, so the next prompt overwrote this one and what
 * came next (the answer, an error) was printed after the prompt on its line.
 */
async function readSilently(prompt: string): Promise<string> {
  const typed = await read({ prompt, silent: true, replace: "", output: process.stderr });
  if (process.stderr.isTTY) process.stderr.write("\n");
  return typed;
}

/** The password: $CLEARBOX_PASSWORD, else asked on the terminal without echo. */
async function password(): Promise<string> {
  const fromEnv = process.env.CLEARBOX_PASSWORD;
  if (fromEnv) return fromEnv;
  const typed = await readSilently("password: ");
  if (!typed) throw new Error("a password is required");
  return typed;
}

/**
 * A new account's password: as `password()`, and when typed on a terminal, typed a second time
 * (nothing is shown while typing, and a typo would be the account's password: no reset exists, and
 * `erase` asks for it). Throws when it breaks the password rule (8 to 256 characters, checked
 * before it is asked again) or the two differ, before anything is sent.
 */
async function newPassword(): Promise<string> {
  const first = await password();
  // Before it is typed again or sent: the server would refuse it only after both.
  const problem = passwordProblem(first);
  if (problem) throw new Error(`the password ${problem}; nothing was sent`);
  if (process.env.CLEARBOX_PASSWORD || !process.stdin.isTTY) return first;
  const again = await readSilently("password (again): ");
  if (again !== first) throw new Error("the two passwords differ; nothing was sent");
  return first;
}

function parseCommandLine(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      server: { type: "string" },
      store: { type: "string", default: "./clearbox.db" },
      "device-name": { type: "string" },
      ca: { type: "string" },
      replenish: { type: "boolean", default: false },
      out: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
}

async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parseCommandLine>;
  try {
    parsed = parseCommandLine(argv);
  } catch (error) {
    // An unknown or incomplete option is a usage error (2), like an unknown command.
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...args] = positionals;
  // Before --help: `npm run cli -- regster --help` is a typo to point out, not a request for the usage.
  if (command && !Object.hasOwn(COMMAND_HELP, command)) {
    console.error(`unknown command ${command}\n\n${USAGE}`);
    return 2;
  }
  if (values.help && command) {
    console.log((COMMAND_HELP[command] as string).replace("CHAT_HELP", CHAT_HELP));
    return 0;
  }
  if (!command) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  // Before the store is opened: checking a receipt needs no account, and must not create a store file.
  if (command === "verify-receipt") return verifyReceiptFile(args[0], values.server, values.ca);
  const storePath = values.store as string;
  const ca = values.ca ? readFileSync(values.ca, "utf8") : undefined;
  const signingIn = command === "register" || command === "login" || command === "signin";
  if (!signingIn && !existsSync(storePath)) {
    console.error(
      `error: no account in ${storePath}: run register or login first (--store <path> for another file)`,
    );
    return 1;
  }
  let client: ClearBoxClient;
  try {
    client = ClearBoxClient.open({ storePath, serverUrl: values.server, ca });
  } catch {
    client = ClearBoxClient.open({ storePath, serverUrl: "http://127.0.0.1:8080", ca });
  }
  try {
    switch (command) {
      case "register":
      case "login": {
        const username = args[0];
        if (!username) throw new Error(`usage: ${command} <username>`);
        const secret = command === "register" ? await newPassword() : await password();
        if (command === "register") await client.register(username, secret, values["device-name"]);
        else await client.login(username, secret, values["device-name"]);
        const done = command === "register" ? "registered and logged in as" : "logged in as";
        console.log(`${done} ${username}: user ${client.userId}, device ${client.deviceId}`);
        return 0;
      }
      case "signin": {
        await client.signInWithDeviceCode({
          deviceName: values["device-name"],
          onPrompt: (prompt) =>
            console.log(
              `to sign in, open ${printable(prompt.verificationUriComplete ?? prompt.verificationUri)} on any device and enter the code ${printable(prompt.userCode)} (valid ${Math.round(prompt.expiresIn / 60)} minutes)`,
            ),
        });
        console.log(`signed in: user ${client.userId}, device ${client.deviceId}`);
        return 0;
      }
      case "whoami":
        console.log(
          `${client.username} user ${client.userId} device ${client.deviceId} on ${client.serverUrl}`,
        );
        return 0;
      case "keys": {
        if (values.replenish) {
          const topped = await client.replenishKeys();
          console.log(`replenished: EC ${topped.preKeys}, Kyber ${topped.kyberPreKeys}`);
        }
        const count = await client.http.keyCount();
        console.log(`one-time keys on the server: ${count.preKeys} EC, ${count.kyberPreKeys} Kyber`);
        return 0;
      }
      case "send":
        return await send(client, args[0], args.slice(1).join(" "));
      case "listen":
        return await listen(client);
      case "chat":
        return await chat(client, { input: process.stdin, output: process.stdout });
      case "export": {
        const archive = await client.http.exportMe();
        const out = values.out ?? `clearbox-export-${client.username ?? client.userId}.json`;
        writePrivateFile(out, `${JSON.stringify(archive, null, 2)}\n`);
        console.log(`wrote what the server holds about ${client.username ?? client.userId} to ${out}`);
        return 0;
      }
      case "erase":
        return await erase(client, values.out);
      default:
        console.error(`unknown command ${command}\n\n${USAGE}`);
        return 2;
    }
  } finally {
    client.close();
  }
}

/** `verify-receipt`: exit 0 valid, 1 invalid, 2 usage, file or network error. */
async function verifyReceiptFile(
  file: string | undefined,
  server: string | undefined,
  caPath: string | undefined,
): Promise<number> {
  if (!file || !server) {
    console.error("usage: verify-receipt <file> --server <url> [--ca <file>]");
    return 2;
  }
  let text: string;
  let ca: string | undefined;
  try {
    text = await readFile(file, "utf8");
    ca = caPath === undefined ? undefined : await readFile(caPath, "utf8");
  } catch (error) {
    console.error(
      `error: cannot read ${(error as { path?: string }).path ?? file}: ${(error as Error).message}`,
    );
    return 2;
  }
  let publishedKey: unknown;
  try {
    publishedKey = (await new ClearBoxHttp(server, undefined, ca).erasureSigningKey())?.publicKey;
  } catch (error) {
    // The error's code is the server's choice, and a receipt is checked because the server is not trusted.
    const reason =
      error instanceof ClearBoxApiError ? `HTTP ${error.status} ${error.code}` : (error as Error).message;
    console.error(`error: cannot fetch the signing key from ${server}: ${printable(reason)}`);
    return 2;
  }
  if (typeof publishedKey !== "string") {
    console.error(`error: ${server}/v1/erasures/signing-key answered without a publicKey`);
    return 2;
  }
  let receipt: unknown;
  try {
    receipt = JSON.parse(text);
  } catch {
    console.log(`invalid: format check failed: ${file} is not JSON`);
    return 1;
  }
  // The status answer of GET /v1/erasures/<id> carries the receipt in its `receipt` field.
  if (receipt && typeof receipt === "object" && "receipt" in receipt && !("payload" in receipt)) {
    receipt = receipt.receipt;
  }
  let check: ReturnType<typeof checkReceipt>;
  try {
    check = checkReceipt(receipt, publishedKey);
  } catch (error) {
    console.error(`error: ${server} publishes an unusable key: ${(error as Error).message}`);
    return 2;
  }
  if (!check.valid) {
    console.log(`invalid: ${check.failed} check failed: ${check.reason}`);
    return 1;
  }
  console.log(
    `valid: the receipt of erasure ${printable(check.erasureId)} is signed with the key ${server} publishes (Ed25519 over the RFC 8785 bytes of its payload)`,
  );
  return 0;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** `erase`: DELETE /v1/me, wait for the receipt, check it against the published key, keep it in a file. */
async function erase(client: ClearBoxClient, outPath: string | undefined): Promise<number> {
  const { erasureId } = await client.http.eraseMe(await password());
  // The server's answer names the receipt's file and goes into URLs: a UUID, or nothing is used.
  if (typeof erasureId !== "string" || !UUID.test(erasureId)) {
    console.error(
      `error: ${client.serverUrl} answered an erasure id that is not a UUID (${printable(String(erasureId))}); ask its operator for the receipt`,
    );
    return 1;
  }
  console.log(`erasure ${erasureId} started; waiting for its receipt`);
  const deadline = Date.now() + 120_000;
  for (;;) {
    const state = await client.http.erasure(erasureId);
    if (state.status === "done" && state.receipt) {
      const out = outPath ?? `erasure-receipt-${erasureId}.json`;
      // It names the account's erasure: the owner's only, as the export is.
      writePrivateFile(out, `${JSON.stringify(state.receipt, null, 2)}\n`);
      const check = checkReceipt(state.receipt, (await client.http.erasureSigningKey()).publicKey);
      // The server chose every string in it: C1 and bidirectional controls, which JSON leaves as
      // they are, are shown escaped (line by line: the layout's own line breaks stay).
      console.log(JSON.stringify(state.receipt, null, 2).split("\n").map(printable).join("\n"));
      console.log(`receipt written to ${out}`);
      if (!check.valid) {
        console.log(`invalid: ${check.failed} check failed: ${check.reason}`);
        return 1;
      }
      console.log(
        `valid: signed with the key ${client.serverUrl} publishes. The local store still holds your keys and history: delete it if you no longer need it.`,
      );
      return 0;
    }
    if (Date.now() > deadline) {
      console.error(
        `the erasure has not finished yet: GET ${client.serverUrl}/v1/erasures/${erasureId} later`,
      );
      return 1;
    }
    await Bun.sleep(250);
  }
}

/** `send`: one message through a Messenger; exits once the server answered it. */
async function send(client: ClearBoxClient, to: string | undefined, text: string): Promise<number> {
  if (!to || !text) throw new Error("usage: send <username> <text...>");
  const messenger = new Messenger(client);
  const queued = await messenger.sendText(to.includes("-") && to.length === 36 ? to : to.toLowerCase(), text);
  const owner = Messenger.socketOwner(client);
  if (owner !== undefined) {
    // One socket per device: the running chat, listen or browser client of this store sends it.
    console.log(`queued: the ClearBox process ${owner} using this store sends it`);
    return 0;
  }
  return new Promise((resolve) => {
    messenger.on("message", (m) => {
      if (m.id !== queued.id) return;
      if (m.state === "sent") console.log(`accepted at ${new Date(m.ts).toISOString()}`);
      else console.error(`not delivered: ${describeRefusal(m.refusal)}`);
      messenger.stop();
      resolve(m.state === "sent" ? 0 : 1);
    });
    messenger.on("status", (status, detail) => {
      if (status === "stopped" && detail.code) {
        console.error(`disconnected (${detail.code} ${printable(detail.reason ?? "")})`);
        resolve(1);
      }
    });
    messenger.start();
  });
}

/** `listen`: prints incoming messages until Ctrl-C; reconnects by itself. */
async function listen(client: ClearBoxClient): Promise<number> {
  const messenger = new Messenger(client);
  messenger.on("message", (m) => {
    if (m.outgoing) return;
    // The group is the server's label, unchecked for a message of an earlier client (none inside).
    const where = m.group ? ` in group ${printable(m.group)}` : "";
    // Text and names come from other users and the server: shown, never acted on by the terminal.
    console.log(
      `[${new Date(m.ts).toISOString()}] ${printable(m.from.username)}${where}: ${printable(m.text)}`,
    );
  });
  messenger.on("identityChanged", (c) =>
    console.log(
      `! the safety number with ${printable(c.username ?? c.userId)} changed (device ${c.deviceId}): verify it again`,
    ),
  );
  messenger.on("undecryptable", (u) =>
    console.error(`cannot decrypt ${printable(u.id)} from ${printable(u.from.user)}: ${printable(u.reason)}`),
  );
  return new Promise((resolve) => {
    messenger.on("status", (status, detail) => {
      if (status === "online")
        console.log(
          `listening as ${client.username ?? client.userId} device ${client.deviceId}; Ctrl-C to stop`,
        );
      if (status === "offline") console.error("connection lost; reconnecting");
      if (status === "stopped") {
        if (detail.code)
          console.error(
            `disconnected (${detail.code}${detail.reason ? ` ${printable(detail.reason)}` : ""})`,
          );
        resolve(detail.code ? 1 : 0);
      }
    });
    process.once("SIGINT", () => messenger.stop());
    messenger.start();
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    const message =
      error instanceof ClearBoxApiError ? `${error.code}: ${error.message}` : (error as Error).message;
    console.error(`error: ${printable(message)}`);
    process.exit(1);
  },
);
