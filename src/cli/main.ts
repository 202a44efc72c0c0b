import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { ClearBoxApiError, ClearBoxClient, ClearBoxHttp } from "../client/index.ts";
import { checkReceipt } from "../protocol/erasure-receipt.ts";

const USAGE = `ClearBox CLI

usage: bun run cli -- <command> [options]

commands:
  register <username>        create an account, log this device in, upload keys
  login <username>           log in (this store's device, or a new one) and upload keys if needed
  signin                     sign in with the organisation's identity provider: open the printed
                             address on any device and enter the code (OAuth device grant)
  whoami                     show the account and device of this store
  keys [--replenish]         one-time keys left on the server; top them up when low
  send <userId> <text...>    encrypt for every device of the user and send (needs the messaging gateway)
  listen                     print incoming messages as they arrive (needs the messaging gateway)
  verify-receipt <file> --server <url> [--ca <file>]
                             check an erasure receipt (the receipt JSON, or the whole answer of
                             GET /v1/erasures/<id>) against the key <url> publishes: its public key
                             must be the server's, and its Ed25519 signature must verify over the
                             RFC 8785 bytes of its payload. Needs no account; touches no store.
                             Exit 0 valid, 1 invalid (names the failed check), 2 bad usage, an
                             unreadable file, or a server that cannot be asked

options:
  --server <url>             ClearBox node (default: the one saved in the store, else http://127.0.0.1:8080)
  --store <path>             this account's key store (default: ./clearbox.db)
  --device-name <name>       name of a newly created device
  --ca <file>                PEM CA certificate(s) to trust for an https server, instead of the
                             system's (or NODE_EXTRA_CA_CERTS=<file> to add to the system's)
  password: $CLEARBOX_PASSWORD, else asked on the terminal`;

function password(): string {
  const fromEnv = process.env.CLEARBOX_PASSWORD;
  if (fromEnv) return fromEnv;
  const typed = prompt("password:");
  if (!typed) throw new Error("a password is required");
  return typed;
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
  if (values.help || !command) {
    console.log(USAGE);
    return command || values.help ? 0 : 2;
  }
  // Before the store is opened: checking a receipt needs no account, and must not create a store file.
  if (command === "verify-receipt") return verifyReceiptFile(args[0], values.server, values.ca);
  const storePath = values.store as string;
  const ca = values.ca ? readFileSync(values.ca, "utf8") : undefined;
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
        if (command === "register") await client.register(username, password(), values["device-name"]);
        else await client.login(username, password(), values["device-name"]);
        console.log(`logged in as ${username}: user ${client.userId}, device ${client.deviceId}`);
        return 0;
      }
      case "signin": {
        await client.signInWithDeviceCode({
          deviceName: values["device-name"],
          onPrompt: (prompt) =>
            console.log(
              `to sign in, open ${prompt.verificationUriComplete ?? prompt.verificationUri} on any device and enter the code ${prompt.userCode} (valid ${Math.round(prompt.expiresIn / 60)} minutes)`,
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
      default:
        console.error(`unknown command ${command}\n\n${USAGE}`);
        return 2;
    }
  } finally {
    if (command !== "listen") client.close();
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
    const reason =
      error instanceof ClearBoxApiError ? `HTTP ${error.status} ${error.code}` : (error as Error).message;
    console.error(`error: cannot fetch the signing key from ${server}: ${reason}`);
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
    `valid: the receipt of erasure ${check.erasureId} is signed with the key ${server} publishes (Ed25519 over the RFC 8785 bytes of its payload)`,
  );
  return 0;
}

async function send(client: ClearBoxClient, userId: string | undefined, text: string): Promise<number> {
  if (!userId || !text) throw new Error("usage: send <userId> <text...>");
  const socket = await client.connect();
  try {
    let refreshDevices = false;
    for (let attempt = 0; attempt < 2; attempt++) {
      const messages = await client.encrypt(userId, text, { refreshDevices });
      const answer = await socket.sendToUser(crypto.randomUUID(), userId, messages);
      if (answer.type === "accepted") {
        console.log(`accepted at ${new Date(answer.ts).toISOString()}`);
        return 0;
      }
      if (answer.code !== "mismatched_devices") {
        console.error(`rejected: ${answer.code}`);
        return 1;
      }
      refreshDevices = true; // the user added or removed a device: fetch their bundles again
    }
    console.error("rejected: the recipient's devices keep changing");
    return 1;
  } finally {
    socket.close();
  }
}

async function listen(client: ClearBoxClient): Promise<number> {
  const socket = await client.connect();
  console.log(`listening as user ${client.userId} device ${client.deviceId}; Ctrl-C to stop`);
  // One message at a time: libsignal session state must not be updated by two decryptions at once.
  let previous = Promise.resolve();
  socket.on("message", (frame) => {
    previous = previous.then(async () => {
      try {
        const text = await client.decryptText({ from: frame.from, envelope: frame.envelope });
        const where = frame.group ? ` in group ${frame.group}` : "";
        console.log(
          `[${new Date(frame.ts).toISOString()}] ${frame.from.user}.${frame.from.device}${where}: ${text}`,
        );
      } catch (error) {
        console.error(`cannot decrypt ${frame.id} from ${frame.from.user}: ${(error as Error).message}`);
      }
      socket.ack([frame.id]);
    });
  });
  return new Promise((resolve) => {
    socket.on("close", (code, reason) => {
      console.error(`disconnected (${code}${reason ? ` ${reason}` : ""})`);
      client.close();
      resolve(code === 1000 ? 0 : 1);
    });
    process.once("SIGINT", () => socket.close());
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    const message =
      error instanceof ClearBoxApiError ? `${error.code}: ${error.message}` : (error as Error).message;
    console.error(`error: ${message}`);
    process.exit(1);
  },
);
