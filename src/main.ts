import { ConfigError, loadConfig } from "./config/index.ts";
import { createNode } from "./node.ts";

/** Starts one ClearBox node from the environment and stops it cleanly on SIGINT/SIGTERM. */
async function main() {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`clearbox: ${error.message}`);
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }
  const node = await createNode(config, { processMetrics: true });
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    node.logger.info({ signal }, "shutting down");
    await node.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
}

await main();
