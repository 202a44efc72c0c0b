/**
 * `verify-receipt` as a user runs it: the CLI in its own process against a node that erased a
 * user, and the doc's OpenSSL recipe against the same node.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { generateKeyPairSync, sign } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { receiptSigningInput, type SignedReceipt } from "../../src/protocol/erasure-receipt.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { runToEnd } from "../support/process.ts";

const ROOT = resolve(import.meta.dir, "../..");
const CLI = join(ROOT, "src/cli/main.ts");

/** Runs a command to its end (runToEnd: the node under test serves from this process). */
const run = runToEnd;

/** `bun src/cli/main.ts ...` in `cwd`, as `bun run cli -- ...` runs it. */
function cli(cwd: string, args: string[]) {
  return run([process.execPath, "run", CLI, ...args], { cwd });
}

describe("verify-receipt (CLI) against a node that erased a user", () => {
  let node: TestNode;
  let dir: string;
  let status: { erasureId: string; status: string; receipt: SignedReceipt };
  let receipt: SignedReceipt;

  /** Writes `content` as JSON into the work directory; returns the file name. */
  function save(name: string, content: unknown): string {
    writeFileSync(join(dir, name), JSON.stringify(content, null, 2));
    return name;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "clearbox-verify-"));
    node = await startTestNode("pglite");
    const http = api(node.url);
    const user = await registerAndLogin(http);
    const started = await http.call("DELETE", "/v1/me", {
      token: user.accessToken,
      body: { password: user.password },
    });
    expect(started.status).toBe(202);
    await node.gdpr.erasures.settled(started.body.erasureId);
    status = (await http.get(`/v1/erasures/${started.body.erasureId}`)).body;
    expect(status.status).toBe("done");
    receipt = status.receipt;
  });
  afterAll(async () => {
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a receipt the node issued is valid (exit 0), and no store file appears", async () => {
    const run = await cli(dir, ["verify-receipt", save("receipt.json", receipt), "--server", node.url]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(run.stdout).toStartWith(`valid: the receipt of erasure ${status.erasureId}`);
    // Without --store the CLI's default store is ./clearbox.db: this command must not create it.
    expect(existsSync(join(dir, "clearbox.db"))).toBe(false);
    expect(readdirSync(dir).filter((f) => f.startsWith("clearbox"))).toEqual([]);
  });

  test("the whole GET /v1/erasures/:id answer is accepted as the file too", async () => {
    const run = await cli(dir, ["verify-receipt", save("status.json", status), "--server", node.url]);
    expect(run.code).toBe(0);
    expect(run.stdout).toStartWith("valid:");
  });

  test("a tampered payload is invalid (exit 1): the signature check fails", async () => {
    const tampered = {
      ...receipt,
      payload: {
        ...receipt.payload,
        stores: { ...receipt.payload.stores, history: { removed: 0, what: "nothing" } },
      },
    };
    const run = await cli(dir, ["verify-receipt", save("tampered.json", tampered), "--server", node.url]);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain("invalid: signature check failed");
  });

  test("a receipt re-signed with another key, that key embedded, is invalid (exit 1): the key check fails", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const forged: SignedReceipt = {
      ...receipt,
      signature: sign(null, receiptSigningInput(receipt.payload), privateKey).toString("base64"),
      publicKey: publicKey.export({ format: "der", type: "spki" }).toString("base64"),
    };
    const run = await cli(dir, ["verify-receipt", save("forged.json", forged), "--server", node.url]);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain("invalid: key check failed");
  });

  test("a file that is not a receipt is invalid (exit 1): the format check fails", async () => {
    writeFileSync(join(dir, "garbage.json"), "not json at all");
    const notJson = await cli(dir, ["verify-receipt", "garbage.json", "--server", node.url]);
    expect(notJson.code).toBe(1);
    expect(notJson.stdout).toContain("invalid: format check failed");
    const noPayload = await cli(dir, ["verify-receipt", save("empty.json", {}), "--server", node.url]);
    expect(noPayload.code).toBe(1);
    expect(noPayload.stdout).toContain("invalid: format check failed");
  });

  test("usage, file and network errors exit 2 and say what went wrong", async () => {
    const file = save("receipt.json", receipt);
    const noServer = await cli(dir, ["verify-receipt", file]);
    expect(noServer.code).toBe(2);
    expect(noServer.stderr).toContain("usage: verify-receipt <file> --server <url>");
    const noFile = await cli(dir, ["verify-receipt", "missing.json", "--server", node.url]);
    expect(noFile.code).toBe(2);
    expect(noFile.stderr).toContain("cannot read missing.json");
    const noCa = await cli(dir, ["verify-receipt", file, "--server", node.url, "--ca", "missing-ca.pem"]);
    expect(noCa.code).toBe(2);
    expect(noCa.stderr).toContain("cannot read missing-ca.pem");
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    const unreachable = await cli(dir, ["verify-receipt", file, "--server", "http://127.0.0.1:1"]);
    expect(unreachable.code).toBe(2);
    expect(unreachable.stderr).toContain("cannot fetch the signing key from http://127.0.0.1:1");
    // The admin listener answers 401 to everything: an HTTP error from the server is exit 2 too.
    const notPublic = await cli(dir, ["verify-receipt", file, "--server", node.adminUrl]);
    expect(notPublic.code).toBe(2);
    expect(notPublic.stderr).toContain("HTTP 401");
    const badFlag = await cli(dir, ["verify-receipt", file, "--server", node.url, "--bogus"]);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toContain("--bogus");
    expect(readdirSync(dir).filter((f) => f.startsWith("clearbox"))).toEqual([]);
  });

  test("`npm run cli -- verify-receipt` gives the same verdicts", async () => {
    const npm = (file: string) =>
      run(["npm", "run", "--silent", "cli", "--", "verify-receipt", file, "--server", node.url], {
        cwd: ROOT,
      });
    const valid = await npm(join(dir, save("receipt.json", receipt)));
    expect(valid.code).toBe(0);
    expect(valid.stdout).toStartWith("valid:");
    const tampered = { ...receipt, payload: { ...receipt.payload, subject: "x" } };
    const invalid = await npm(join(dir, save("tampered.json", tampered)));
    expect(invalid.code).toBe(1);
    expect(invalid.stdout).toContain("invalid: signature check failed");
  });

  test("docs/GDPR.md's recipe without ClearBox code (Python, jq, OpenSSL) accepts the receipt and refuses forgeries", async () => {
    const doc = readFileSync(join(ROOT, "docs/GDPR.md"), "utf8");
    const recipe = doc.match(/```sh\n(# 1\. The signed bytes[\s\S]*?openssl pkeyutl[^\n]*)\n```/)?.[1];
    expect(recipe).toBeDefined();
    const runRecipe = (content: unknown) => {
      writeFileSync(join(dir, "receipt.json"), JSON.stringify(content, null, 2));
      return run(["bash", "-euo", "pipefail", "-c", recipe as string], {
        cwd: dir,
        env: { ...process.env, SERVER: node.url },
      });
    };
    const valid = await runRecipe(receipt);
    expect(valid.code).toBe(0);
    expect(valid.stdout).toContain("Signature Verified Successfully");
    const tampered = await runRecipe({
      ...receipt,
      payload: { ...receipt.payload, subject: "someone else" },
    });
    expect(tampered.code).not.toBe(0);
    expect(tampered.stdout).toContain("Signature Verification Failure");
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const forged = await runRecipe({
      ...receipt,
      signature: sign(null, receiptSigningInput(receipt.payload), privateKey).toString("base64"),
      publicKey: publicKey.export({ format: "der", type: "spki" }).toString("base64"),
    });
    expect(forged.code).not.toBe(0);
    expect(forged.stdout).toContain("differ"); // cmp: the receipt's key is not the server's
  });
});
