import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ClearBoxApiError, ClearBoxClient } from "../client/index.ts";

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

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
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
  const [command, ...args] = positionals;
  if (values.help || !command) {
    console.log(USAGE);
    return command || values.help ? 0 : 2;
  }
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
