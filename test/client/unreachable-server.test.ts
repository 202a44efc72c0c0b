/**
 * A server that cannot be reached is named in the error: the SDK's TypeError and the CLI's
 * message say which address was tried and why (the network's reason), without the doubled
 * "TypeError:" of the runtime's own text. No node runs here: the port is one the kernel just freed.
 */
import { describe, expect, test } from "bun:test";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ClearBoxHttp } from "../../src/client/index.ts";
import { freePort } from "../support/free-port.ts";

const ROOT = resolve(import.meta.dir, "../..");

describe("a server that cannot be reached", () => {
  test("the SDK names the address it tried, for a call without and with a login", async () => {
    const url = `http://127.0.0.1:${await freePort()}`;
    const http = new ClearBoxHttp(url);
    for (const call of [
      () => http.erasureSigningKey(),
      () => http.login({ username: "nobody", password: "x".repeat(8) }),
    ]) {
      const error = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TypeError);
      const message = (error as Error).message;
      expect(message).toStartWith(`cannot reach the server at ${url}: `);
      expect(message).not.toContain("TypeError");
      expect(message.length).toBeGreaterThan(`cannot reach the server at ${url}: `.length);
    }
  });

  test("the CLI prints that address (register and verify-receipt), exits 1 and 2, and writes no store", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cb-unreachable-"));
    try {
      const url = `http://127.0.0.1:${await freePort()}`;
      const run = async (args: string[]) => {
        const proc = Bun.spawn(["bun", "run", join(ROOT, "src/cli/main.ts"), ...args], {
          cwd: dir,
          env: { ...process.env, CLEARBOX_PASSWORD: "long-enough-password" },
          stdout: "pipe",
          stderr: "pipe",
        });
        const [err, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
        return { err, code };
      };
      const register = await run(["register", "newcomer", "--server", url, "--store", "n.db"]);
      expect(register.code).toBe(1);
      expect(register.err).toContain(`cannot reach the server at ${url}: `);
      expect(register.err).not.toContain("TypeError");
      expect(await Bun.file(join(dir, "n.db")).exists()).toBe(false);

      await writeFile(join(dir, "receipt.json"), "{}");
      const verify = await run(["verify-receipt", "receipt.json", "--server", url]);
      expect(verify.code).toBe(2);
      expect(verify.err).toContain(`cannot reach the server at ${url}: `);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
