import { DataDirLockedError, lockDataDir } from "./config/data-dir-lock.ts";
import {
  ConfigError,
  checkWritablePaths,
  EXIT_CONFIG,
  EXIT_SOFTWARE,
  EXIT_UNAVAILABLE,
  loadConfig,
  StartupError,
} from "./config/index.ts";
import { preparePglite } from "./db/pglite-prepare.ts";
import { exitOnUncaught } from "./observability/fatal.ts";

/**
 * Starts one ClearBox node from the environment and stops it cleanly on SIGINT/SIGTERM.
 * Exit codes (README, "Configuration"): 0 stopped by a signal; 78 (`EX_CONFIG`) a variable is
 * invalid; 69 (`EX_UNAVAILABLE`) a configured service did not answer at start-up or a port is in use;
 * 70 (`EX_SOFTWARE`) an error nobody caught while the node ran (`exitOnUncaught`); 1 anything else. The first two print one line naming the variable, never a stack
 * (78 also when DATA_DIR or ERASURE_LEDGER_FILE cannot be written: `checkWritablePaths`, and when
 * another live process holds DATA_DIR: `lockDataDir`, the line naming the directory and its pid;
 * such a process writes nothing into DATA_DIR).
 */
async function main() {
  let config: ReturnType<typeof loadConfig>;
  try {
    // The lock is held until the process ends (the kernel releases it, even after a kill -9): a
    // second process on this DATA_DIR would open PGlite, the envelope log and the erasure ledger
    // beside this one. It is taken before anything is written there, the development JWT secret
    // included: two processes on a fresh directory each wrote their own, and the loser's write
    // could replace the secret the winner signs with.
    config = loadConfig(process.env, { beforeDataDirWrites: (dataDir) => lockDataDir(dataDir) });
    checkWritablePaths(config);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`clearbox: ${error.message}`);
      process.exit(EXIT_CONFIG);
    }
    if (error instanceof DataDirLockedError) {
      console.error(`clearbox: DATA_DIR: ${error.message}`);
      process.exit(EXIT_CONFIG);
    }
    throw error;
  }
  // The embedded database's WebAssembly compiles and a fresh data directory is written off the event
  // loop while the server's modules load (node.ts is imported after, not before, this line).
  let pglite: ReturnType<typeof preparePglite> | undefined;
  if (!config.databaseUrl) pglite = preparePglite(config.dataDir);
  const { createNode } = await import("./node.ts");
  let node: Awaited<ReturnType<typeof createNode>> | undefined;
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping || !node) return;
    stopping = true;
    node.logger.info({ signal }, "shutting down");
    try {
      await node.stop();
    } catch (error) {
      node.logger.error({ err: error }, "shutdown failed");
      process.exit(1);
    }
    process.exit(0);
  };
  // A signal that came after the start line but before createNode returned: stop once it has.
  let requested: string | undefined;
  const onSignal = (signal: string) => {
    if (node) void shutdown(signal);
    else requested ??= signal;
  };
  try {
    node = await createNode(config, {
      processMetrics: true,
      pglite,
      // Before the start line, not after createNode returns: whoever waits for that line (a test, a
      // supervisor) may send SIGTERM at once, and without a handler it killed the node (exit 143).
      // Until then a signal ends the start as it always did.
      onListening: () => {
        process.on("SIGINT", () => onSignal("SIGINT"));
        process.on("SIGTERM", () => onSignal("SIGTERM"));
      },
    });
  } catch (error) {
    if (error instanceof StartupError) {
      console.error(`clearbox: ${error.message}`);
      process.exit(EXIT_UNAVAILABLE);
    }
    throw error;
  }
  exitOnUncaught(node.logger, EXIT_SOFTWARE);
  if (requested) void shutdown(requested);
}

await main();
