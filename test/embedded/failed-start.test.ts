import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BootExited, bootOnFreePorts } from "../support/free-port.ts";
import { startTestNode } from "../support/node.ts";

// A start that fails late (here: the admin port is taken, after the public listener is bound and
// the actor system and stores are open) must release what it opened: a process embedding the node
// goes on, and nothing of a node that never started keeps serving or reconnecting.

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe("a node whose start fails at the admin listener", () => {
  test("names ADMIN_PORT and leaves the public port free again", async () => {
    const taken = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("taken") });
    try {
      // PORT is chosen free a moment before the node binds it: when another process took it
      // meanwhile, the start fails on PORT instead, and is tried again on a fresh port.
      const { port, failed } = await bootOnFreePorts(async (ports) => {
        const port = await ports();
        const dataDir = mkdtempSync(join(tmpdir(), "clearbox-failed-start-"));
        dirs.push(dataDir);
        const failed = await startTestNode("pglite", {
          dataDir,
          env: { PORT: String(port), ADMIN_PORT: String(taken.port) },
        }).then(
          () => undefined,
          (error: unknown) => error as Error,
        );
        if (failed?.message.startsWith("PORT: ")) throw new BootExited(failed.message);
        return { port, failed };
      });
      expect(failed?.message).toMatch(/^ADMIN_PORT: port \d+ is already in use/);
      // The public listener it had bound is closed: the port can be bound again.
      const again = Bun.serve({ port, hostname: "127.0.0.1", fetch: () => new Response("again") });
      again.stop(true);
    } finally {
      taken.stop(true);
    }
  });
});
