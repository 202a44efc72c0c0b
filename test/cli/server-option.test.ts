/**
 * `--server` on a command other than register, login or signin is for that run only: it replaced
 * the server saved in the store, so a one-off server, or a typo in it, became the default of every
 * later command. A real node (embedded) and the real CLI process.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { runToEnd } from "../support/process.ts";
import { startTcpProxy } from "../support/tcp-proxy.ts";

const CLI = resolve(import.meta.dir, "../../src/cli/main.ts");

describe("CLI --server", () => {
  let node: TestNode;
  let dir: string;
  let store: string;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-cli-server-"));
    store = join(dir, "account.db");
  });
  afterAll(async () => {
    await node?.teardown();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const run = async (args: string[]) => {
    const { stdout, stderr, code } = await runToEnd(
      [process.execPath, "run", CLI, ...args, "--store", store],
      {
        env: { ...process.env, CLEARBOX_PASSWORD: "correct horse battery" },
      },
    );
    return { out: stdout, err: stderr, code };
  };

  test("a one-off --server is used for its run and leaves the saved server as it was", async () => {
    const username = uniqueUsername("srv");
    const registered = await run(["register", username, "--server", node.url]);
    expect(registered.code).toBe(0);

    const typo = "http://127.0.0.1:9";
    const once = await run(["whoami", "--server", typo]);
    expect(once.code).toBe(0);
    expect(once.out).toContain(`on ${typo}`);

    const after = await run(["whoami"]);
    expect(after.code).toBe(0);
    expect(after.out).toContain(`on ${node.url}`);
    expect(after.out).not.toContain(typo);
  });

  test("login saves the server it succeeded on", async () => {
    const username = uniqueUsername("srvlogin");
    const otherStore = join(dir, "login.db");
    const cli = (args: string[]) =>
      runToEnd([process.execPath, "run", CLI, ...args, "--store", otherStore], {
        env: { ...process.env, CLEARBOX_PASSWORD: "correct horse battery" },
      });
    expect((await cli(["register", username, "--server", node.url])).code).toBe(0);
    // The same node at a second address: a login there saves that address.
    const proxy = await startTcpProxy(node.url);
    try {
      expect((await cli(["login", username, "--server", proxy.url])).code).toBe(0);
      const whoami = await cli(["whoami"]);
      expect(whoami.stdout).toContain(`on ${proxy.url}`);
    } finally {
      await proxy.close();
    }
  });
});
