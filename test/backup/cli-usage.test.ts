/**
 * `npm run backup -- --help` and `npm run restore -- --help` print the usage and exit 0 (they were
 * refused as an unknown option, exit 2); a real usage error still exits 2. Nothing is backed up or
 * restored: no node or database is involved.
 */
import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const CLI = resolve(import.meta.dir, "../../src/backup/cli.ts");

async function run(args: string[]) {
  const {
    stdout: out,
    stderr: err,
    code,
  } = await runToEnd(["bun", "run", CLI, ...args], {
    env: { ...process.env, ADMIN_TOKEN: "", ADMIN_TOKEN_FILE: "", DATABASE_URL: "" },
  });
  return { out, err, code };
}

describe("backup and restore usage", () => {
  test("--help and -h print the usage on stdout and exit 0, for backup, restore and alone", async () => {
    for (const args of [["backup", "--help"], ["restore", "--help"], ["restore", "-h"], ["--help"]]) {
      const { out, err, code } = await run(args);
      expect(code).toBe(0);
      expect(out).toContain("npm run backup -- [--admin-url <url>]");
      expect(out).toContain("npm run restore -- <backup directory>");
      expect(err).toBe("");
    }
  });

  test("bad usage still exits 2 with the reason and the usage on stderr", async () => {
    const unknown = await run(["backup", "--bogus"]);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toContain("--bogus");
    expect(unknown.err).toContain("usage:");
    const noToken = await run(["backup"]);
    expect(noToken.code).toBe(2);
    expect(noToken.err).toContain("no admin token");
  });
});
