/**
 * The CLI's password prompts on a real terminal: `script` (util-linux) gives the CLI a
 * pseudo-terminal, and the test types each answer once the prompt is shown. Each prompt's line is
 * ended after its answer: the silent read muted the Enter's newline, so the second prompt was drawn
 * over the first and the outcome (an error, "registered …") was printed on the prompt's line.
 * No node is needed: the server named does not listen, so register ends in "cannot reach".
 */
import { describe, expect, test } from "bun:test";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { stripVTControlCharacters } from "node:util";

const MAIN = resolve(import.meta.dir, "../../src/cli/main.ts");

describe("password prompts on a terminal", () => {
  test("register's two prompts and its outcome each get a line, and nothing typed is shown", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cb-cli-prompt-"));
    const store = join(dir, "a.db");
    const { CLEARBOX_PASSWORD: _, ...env } = process.env;
    const child = Bun.spawn(
      [
        "script",
        "-qefc",
        `bun run ${MAIN} register alice --server http://127.0.0.1:9 --store ${store}`,
        "/dev/null",
      ],
      { cwd: dir, env, stdin: "pipe", stdout: "pipe", stderr: "pipe" },
    );
    let out = "";
    const reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stdout) out += decoder.decode(chunk, { stream: true });
    })();
    const shown = async (text: string) => {
      const deadline = Date.now() + 30_000;
      while (!out.includes(text)) {
        if (Date.now() > deadline) throw new Error(`no ${JSON.stringify(text)} in ${JSON.stringify(out)}`);
        await Bun.sleep(20);
      }
    };
    try {
      await shown("password: ");
      child.stdin.write("longenough1\r");
      child.stdin.flush();
      await shown("password (again): ");
      child.stdin.write("longenough1\r");
      child.stdin.flush();
      await child.exited;
      await reading;
      // Terminal escapes (cursor moves, colours) aside, as a terminal would show the lines.
      const lines = stripVTControlCharacters(out)
        .split(/\r?\n/)
        .filter((line) => line !== "");
      expect(lines).toEqual([
        "password: ",
        "password (again): ",
        expect.stringMatching(/^error: cannot reach the server at http:\/\/127\.0\.0\.1:9/),
      ]);
      expect(out).not.toContain("longenough1");
      expect(await readdir(dir)).toEqual([]);
    } finally {
      child.kill();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
