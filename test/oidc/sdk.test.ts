import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ClearBoxApiError, ClearBoxClient } from "../../src/client/index.ts";
import type { TestNode } from "../support/node.ts";
import { TestBrowser, type TestProvider } from "../support/oidc-provider.ts";
import { startWithProvider } from "./support.ts";

const CLI = resolve(import.meta.dir, "../../src/cli/main.ts");

/** The user approving a device sign-in at the provider, in a browser on another machine. */
async function approve(verificationUri: string, userCode: string, login: string): Promise<void> {
  const { page } = await new TestBrowser().walk(verificationUri, { login, userCode, stop: () => false });
  expect(page).toContain("Sign-in Success");
}

/** A native client's browser sign-in through a loopback return URI (RFC 8252), returning the code. */
async function browserCode(client: ClearBoxClient, login: string) {
  const returnUri = "http://127.0.0.1:47123/signed-in";
  const { url, codeVerifier } = client.beginBrowserSignIn(returnUri);
  const walked = await new TestBrowser().walk(url, { login, stop: (u) => u.href.startsWith(returnUri) });
  return { code: walked.stoppedAt?.searchParams.get("code") as string, codeVerifier };
}

// The SDK talks HTTP only: one backend is enough here (the server suites run on both).
describe("SDK and CLI sign-in with the identity provider", () => {
  let node: TestNode;
  let provider: TestProvider;
  let dir: string;

  beforeAll(async () => {
    ({ node, provider } = await startWithProvider("pglite"));
    dir = mkdtempSync(join(tmpdir(), "clearbox-oidc-sdk-"));
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("signInWithDeviceCode signs a store in without a browser, uploads keys, and a later browser sign-in reuses its device", async () => {
    const sub = `sub_${randomUUID().slice(0, 8)}`;
    const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    let prompted = 0;
    await client.signInWithDeviceCode({
      deviceName: "laptop",
      onPrompt: async (prompt) => {
        prompted++;
        expect(prompt.verificationUri).toStartWith(provider.issuer);
        await approve(prompt.verificationUri, prompt.userCode, sub);
      },
    });
    expect(prompted).toBe(1);
    expect(client.deviceId).toBe(1);
    expect(await client.http.keyCount()).toEqual({ preKeys: 100, kyberPreKeys: 100 });
    const firstUser = client.userId;

    const { code, codeVerifier } = await browserCode(client, sub);
    await client.completeSignIn(code, { codeVerifier });
    expect({ user: client.userId, device: client.deviceId }).toEqual({ user: firstUser, device: 1 });
    expect((await client.http.devices()).map((d) => d.name)).toEqual(["laptop"]);

    // A store that holds this account refuses to be signed in as someone else.
    const other = await browserCode(client, `sub_${randomUUID().slice(0, 8)}`);
    const refused = await client
      .completeSignIn(other.code, { codeVerifier: other.codeVerifier })
      .catch((e) => e);
    expect(refused).toBeInstanceOf(ClearBoxApiError);
    expect(refused.status).toBe(401);
    expect(client.userId).toBe(firstUser);
    client.close();
  });

  test("signInWithDeviceCode stops when its signal aborts", async () => {
    const client = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
    const controller = new AbortController();
    const outcome = client
      .signInWithDeviceCode({
        signal: controller.signal,
        onPrompt: () => controller.abort(new Error("user gave up")),
      })
      .catch((e) => e);
    expect(String(await outcome)).toContain("user gave up");
    client.close();
  });

  test("the CLI's signin prints where to sign in and the code, then signs this store in", async () => {
    const storePath = join(dir, "cli.db");
    const proc = Bun.spawn(
      [process.execPath, "run", CLI, "signin", "--server", node.url, "--store", storePath],
      {
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    const reader = proc.stdout.getReader();
    let out = "";
    while (!out.includes("enter the code")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    const match = out.match(/open (\S+) on any device and enter the code (\S+)/);
    expect(match).not.toBeNull();
    await approve(
      (match as RegExpMatchArray)[1],
      (match as RegExpMatchArray)[2],
      `sub_${randomUUID().slice(0, 8)}`,
    );
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(await proc.exited).toBe(0);
    expect(out).toMatch(/signed in: user [0-9a-f-]{36}, device 1/);
  });
});
