import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config/index.ts";
import { openDatabase } from "../../src/db/index.ts";
import { openMessagingStores } from "../../src/messaging/stores.ts";

/** A TCP port nothing listens on (taken from the OS, then released). */
async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("opening a node's messaging stores", () => {
  const dir = mkdtempSync(join(tmpdir(), "clearbox-stores-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("when the offline queue cannot open, the envelope log it opened first is closed again", async () => {
    const database = await openDatabase({ dataDir: null });
    // The log of a node without a data directory lives in a temporary directory (TMPDIR) that only
    // its close removes: one left behind is a log left open, its writer thread still running.
    const temporary = mkdtempSync(join(dir, "tmp-"));
    const savedTmpdir = process.env.TMPDIR;
    process.env.TMPDIR = temporary;
    try {
      const config = loadConfig({
        DATA_DIR: dir,
        JWT_SECRET: "x".repeat(32),
        AMQP_URL: `amqp://guest:guest@127.0.0.1:${await unusedPort()}`,
        STARTUP_WAIT_SECONDS: "1",
      });
      await expect(openMessagingStores(config, database, undefined, null)).rejects.toThrow();
      expect(readdirSync(temporary)).toEqual([]);
    } finally {
      if (savedTmpdir === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmpdir;
      await database.close();
    }
  });
});
