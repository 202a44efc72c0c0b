import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ensureBuilt, WEB_DIST } from "./build.ts";
import { startWebClient } from "./server.ts";

const USAGE = `ClearBox browser client

usage: npm run client:web -- --store <path> [--server <url>] [--port <n>] [--ca <file>]

Starts the local client process on 127.0.0.1 and prints the address to open, with its secret
(like Jupyter's token). The process holds the account's key store and does all cryptography;
the page in the browser only shows and asks.

options:
  --store <path>   the account's key store (written once sign-up or sign-in succeeded)
  --server <url>   ClearBox node (default: the one saved in the store, else http://127.0.0.1:8080)
  --port <n>       loopback port (default: a free one)
  --ca <file>      PEM CA certificate(s) to trust for an https server
  --rebuild        build the page again even when the build looks current`;

async function main(): Promise<void> {
  let values: ReturnType<typeof parse>["values"];
  try {
    values = parse().values;
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.store) {
    console.error(`--store is required\n\n${USAGE}`);
    process.exit(2);
  }
  const port = values.port === undefined ? 0 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error("--port: a port number 0-65535");
    process.exit(2);
  }
  const assetsDir = await ensureBuilt({
    force: values.rebuild,
    quiet: true,
    // On stderr: stdout keeps the one line a script reads, the address to open.
    onBuild: () =>
      console.error(
        `building the page into ${WEB_DIST} with Vite (first start or --rebuild: a few seconds)…`,
      ),
  });
  let client: Awaited<ReturnType<typeof startWebClient>>;
  try {
    client = await startWebClient({
      storePath: values.store,
      serverUrl: values.server,
      port,
      assetsDir,
      ca: values.ca ? readFileSync(values.ca, "utf8") : undefined,
    });
  } catch (error) {
    console.error(`error: ${(error as Error).message}`);
    process.exit(1);
  }
  console.log(`ClearBox client for ${values.store}: open ${client.url}`);
  const stop = () => void client.stop().then(() => process.exit(0));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

function parse() {
  return parseArgs({
    args: process.argv.slice(2),
    options: {
      store: { type: "string" },
      server: { type: "string" },
      port: { type: "string" },
      ca: { type: "string" },
      rebuild: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
}

await main();
