/**
 * `npm run backup -- --help` and `npm run restore -- --help` print the usage and exit 0 (they were
 * refused as an unknown option, exit 2); a real usage error still exits 2. Nothing is backed up or
 * restored: no node or database is involved.
 */
import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { runToEnd } from "../support/process.ts";

const CLI = resolve(import.meta.dir, "../../src/backup/cli.ts");

async function run(args: string[], env: Record<string, string> = {}) {
  const {
    stdout: out,
    stderr: err,
    code,
  } = await runToEnd(["bun", "run", CLI, ...args], {
    env: { ...process.env, ADMIN_TOKEN: "", ADMIN_TOKEN_FILE: "", DATABASE_URL: "", ...env },
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

  test("an ADMIN_TOKEN_FILE or --ca file that cannot be read exits 2 naming it, no stack trace, nothing sent", async () => {
    const missing = "/nonexistent/clearbox-admin-token";
    // No node listens on the admin URL: reaching the fetch would print "could not reach", not the file.
    const url = "http://127.0.0.1:9/";
    const tokenFile = await run(["backup", "--admin-url", url], { ADMIN_TOKEN_FILE: missing });
    const caFile = await run(["backup", "--admin-url", url, "--ca", missing], {
      ADMIN_TOKEN: "x".repeat(24),
    });
    for (const [ran, name] of [
      [tokenFile, "ADMIN_TOKEN_FILE"],
      [caFile, "--ca"],
    ] as const) {
      expect({ code: ran.code, first: ran.err.split("\n")[0] }).toEqual({
        code: 2,
        first: expect.stringMatching(new RegExp(`^${name}: cannot read .*ENOENT.*${missing}`)),
      });
      expect(ran.err).not.toContain("    at ");
      expect(ran.err).not.toContain("could not reach");
    }
  });

  test("without --admin-url, backup asks the listener ADMIN_HOST/ADMIN_PORT name, not always 127.0.0.1:9090", async () => {
    // Nothing listens on port 9 (discard, never served here): the refusal names the URL it tried.
    const moved = await run(["backup"], {
      ADMIN_TOKEN: "x".repeat(24),
      ADMIN_PORT: "9",
      ADMIN_HOST: "0.0.0.0",
    });
    expect({ code: moved.code, err: moved.err.split("\n")[0] }).toEqual({
      code: 1,
      err: expect.stringMatching(/^could not reach http:\/\/127\.0\.0\.1:9: /),
    });
    const v6 = await run(["backup"], { ADMIN_TOKEN: "x".repeat(24), ADMIN_PORT: "9", ADMIN_HOST: "::1" });
    expect(v6.err.split("\n")[0]).toMatch(/^could not reach http:\/\/\[::1\]:9: /);
  });
});
