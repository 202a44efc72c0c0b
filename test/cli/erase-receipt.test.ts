import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Server } from "bun";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { runToEnd } from "../support/process.ts";

const CLI = resolve(import.meta.dir, "../../src/cli/main.ts");
const password = "correct horse battery";
const ERASURE_ID = "7c9e6679-7425-40de-944b-e07c4f29a3b1";
/** A real Ed25519 key (SPKI DER, base64), published and named in the receipt: only the signature fails. */
const KEY = generateKeyPairSync("ed25519")
  .publicKey.export({ type: "spki", format: "der" })
  .toString("base64");

/**
 * `erase` printed the receipt the server sent with JSON.stringify, which escapes C0 controls but
 * leaves C1 controls (U+009B, an 8-bit CSI) and the bidirectional formatting characters as they
 * are: a hostile server's receipt drove the user's terminal or reordered what it showed. And the
 * server's erasure id named the receipt's file. Here a real account's store is pointed at a server
 * (a real Bun HTTP server) that answers the erasure with such strings.
 */
describe("CLI erase against a hostile server", () => {
  let node: TestNode;
  let dir: string;
  let store: string;
  let hostile: Server<undefined>;
  let erasureId = ERASURE_ID;
  /** The signing key's answer: the key, or a refusal whose error code the server chose. */
  let keyRefusal: string | undefined;

  beforeAll(async () => {
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-cli-erase-"));
    store = join(dir, "account.db");
    const registered = await run(["register", uniqueUsername("eve"), "--server", node.url, "--store", store]);
    expect(registered.code).toBe(0);
    const [, userId, deviceId] = /user (\S+), device (\d+)/.exec(registered.out) ?? [];
    hostile = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch(request) {
        const { pathname } = new URL(request.url);
        // The CLI renews its session first: the server hands it any tokens.
        if (pathname === "/v1/sessions/refresh") {
          return Response.json(
            { userId, deviceId: Number(deviceId), accessToken: "a.b.c", refreshToken: "r", expiresIn: 900 },
            { status: 201 },
          );
        }
        if (request.method === "DELETE" && pathname === "/v1/me") return Response.json({ erasureId });
        if (pathname === "/v1/erasures/signing-key") {
          if (keyRefusal !== undefined)
            return Response.json({ error: { code: keyRefusal, message: "no" } }, { status: 503 });
          return Response.json({ publicKey: KEY });
        }
        if (pathname.startsWith("/v1/erasures/")) {
          return Response.json({
            erasureId,
            status: "done",
            receipt: {
              payload: { erasureId, note: "\u009b2J\u009b31mall clear \u202eesrever" },
              algorithm: "Ed25519",
              publicKey: KEY,
              signature: "\u009d8;;https://evil.example\u009c",
            },
          });
        }
        return new Response("not found", { status: 404 });
      },
    });
  });
  afterAll(async () => {
    hostile?.stop(true);
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  async function run(args: string[]) {
    const {
      stdout: out,
      stderr: err,
      code,
    } = await runToEnd([process.execPath, "run", CLI, ...args], {
      env: { ...process.env, CLEARBOX_PASSWORD: password },
    });
    return { out, err, code };
  }

  const eraseAtHostile = () =>
    run([
      "erase",
      "--server",
      `http://127.0.0.1:${hostile.port}`,
      "--store",
      store,
      "--out",
      join(dir, "r.json"),
    ]);

  test("the receipt is printed with C1 and bidirectional controls escaped", async () => {
    erasureId = ERASURE_ID;
    // A file of that name already there, world-readable: the receipt in it is the owner's only.
    writeFileSync(join(dir, "r.json"), "");
    chmodSync(join(dir, "r.json"), 0o644);
    const { out, code } = await eraseAtHostile();
    expect(statSync(join(dir, "r.json")).mode & 0o777).toBe(0o600);
    expect(code).toBe(1); // the receipt does not verify
    expect(out).toContain("invalid:");
    expect(out).not.toMatch(/[\u0080-\u009f\u202a-\u202e\u2066-\u2069]/);
    expect(out).toContain("\\x9b2J\\x9b31mall clear \\u{202e}esrever");
    expect(out).toContain("\\x9d8;;https://evil.example\\x9c");
  });

  test("verify-receipt shows a refusal's error code with terminal controls escaped", async () => {
    const file = join(dir, "receipt-to-check.json");
    await Bun.write(
      file,
      JSON.stringify({ payload: {}, algorithm: "Ed25519", publicKey: KEY, signature: "x" }),
    );
    // An OSC 52 clipboard write, a C1 CSI and a right-to-left override as the error's code.
    keyRefusal = "\u001b]52;c;ZXZpbA==\u0007\u009b2J\u202eesrever";
    try {
      const { out, err, code } = await run([
        "verify-receipt",
        file,
        "--server",
        `http://127.0.0.1:${hostile.port}`,
      ]);
      expect(code).toBe(2);
      expect(err).toContain("cannot fetch the signing key");
      for (const c of ["\x1b", "\x07", "\x9b", "\u202e"]) expect(`${out}${err}`).not.toContain(c);
      expect(err).toContain("HTTP 503 \\x1b]52;c;ZXZpbA==\\x07\\x9b2J\\u{202e}esrever");
    } finally {
      keyRefusal = undefined;
    }
  });

  test("an erasure id that is not a UUID names no file and is shown escaped", async () => {
    erasureId = "../../escaped\u009b";
    const before = readdirSync(dir).sort();
    const { out, err, code } = await run([
      "erase",
      "--server",
      `http://127.0.0.1:${hostile.port}`,
      "--store",
      store,
    ]);
    expect(code).toBe(1);
    expect(`${out}${err}`).not.toMatch(/[\u0080-\u009f]/);
    expect(err).toContain("not a UUID");
    expect(readdirSync(dir).sort()).toEqual(before);
    expect(existsSync(resolve(dir, "../../escaped\u009b.json"))).toBe(false);
  });
});
