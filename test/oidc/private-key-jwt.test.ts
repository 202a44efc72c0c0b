import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Api, api } from "../support/http.ts";
import type { TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { browserSignIn, deviceSignIn, startWithProvider } from "./support.ts";

// Client authentication is between ClearBox and the provider only: one backend is enough.
describe("private_key_jwt client authentication", () => {
  let node: TestNode;
  let provider: TestProvider;
  let client: Api;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "clearbox-pkjwt-"));
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const keyFile = join(dir, "client.pem");
    writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }));
    ({ node, provider } = await startWithProvider("pglite", {
      clientJwks: [{ ...publicKey.export({ format: "jwk" }), kid: "clearbox-1", alg: "ES256", use: "sig" }],
      env: { OIDC_PRIVATE_KEY_FILE: keyFile, OIDC_PRIVATE_KEY_ID: "clearbox-1" },
    }));
    client = api(node.url);
  });
  afterAll(async () => {
    await node?.teardown();
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the code and device grants authenticate ClearBox with a JWT signed by its key, no secret", async () => {
    const browser = await browserSignIn(node, "pkjwt_user");
    expect(browser.response.status).toBe(303);
    const session = await client.post("/v1/oidc/sessions", {
      code: browser.code,
      codeVerifier: browser.verifier,
      registrationId: 4,
    });
    expect(session.status).toBe(201);
    const device = await deviceSignIn(client, "pkjwt_user");
    const second = await client.post("/v1/oidc/sessions", { code: device.code, registrationId: 5 });
    expect(second.body.userId).toBe(session.body.userId);
  });
});
