/**
 * The CLI's usage errors, as a newcomer meets them: a mistyped command is named and exits 2, with
 * or without --help (it used to print the general usage and exit 0 with --help); no command is a
 * usage error; --help alone and a real command's --help exit 0. No node is needed: none of these
 * reaches a server or opens a store.
 */
import { describe, expect, test } from "bun:test";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const MAIN = resolve(import.meta.dir, "../../src/cli/main.ts");

async function cli(cwd: string, args: string[]) {
  const { stdout: out, stderr: err, code } = await runToEnd(["bun", "run", MAIN, ...args], { cwd });
  return { out, err, code };
}

describe("CLI usage errors", () => {
  test("an unknown command exits 2 naming it, also with --help, and writes nothing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cb-cli-usage-"));
    try {
      for (const args of [
        ["regster", "alice"],
        ["regster", "--help"],
        ["toString"],
        ["constructor", "--help"],
      ]) {
        const { out, err, code } = await cli(dir, args);
        expect(code).toBe(2);
        expect(err).toContain(`unknown command ${args[0]}`);
        expect(err).toContain("usage: npm run cli -- <command> [options]");
        expect(out).toBe("");
      }
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("no command is a usage error (2); --help alone and a command's --help are not (0)", async () => {
    const none = await cli(tmpdir(), []);
    expect(none.code).toBe(2);
    expect(none.out).toContain("usage: npm run cli -- <command> [options]");
    const help = await cli(tmpdir(), ["--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toContain("usage: npm run cli -- <command> [options]");
    expect(help.out).toContain("npx bun run src/cli/main.ts");
    const register = await cli(tmpdir(), ["register", "--help"]);
    expect(register.code).toBe(0);
    expect(register.out).toContain("usage: npm run cli -- register <username>");
  });
});

describe("a new account's password", () => {
  test("outside 8-256 characters is refused by register naming the rule, before any server is asked, and writes nothing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cb-cli-password-"));
    try {
      for (const password of ["short", "x".repeat(257)]) {
        // Nothing listens on port 9: reaching the server would print "cannot reach", not the rule.
        const { stdout, stderr, code } = await runToEnd(
          ["bun", "run", MAIN, "register", "alice", "--server", "http://127.0.0.1:9", "--store", "a.db"],
          { cwd: dir, env: { ...process.env, CLEARBOX_PASSWORD: password } },
        );
        expect({ code, stdout, stderr }).toEqual({
          code: 1,
          stdout: "",
          stderr: `error: the password must be 8 to 256 characters (this one has ${password.length}); nothing was sent\n`,
        });
      }
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("register --help names the password rule", async () => {
    const register = await cli(tmpdir(), ["register", "--help"]);
    expect(register.out).toContain("The password (8-256 characters)");
  });
});
