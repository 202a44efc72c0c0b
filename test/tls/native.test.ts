import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { ClearBoxClient } from "../../src/client/index.ts";
import { uniqueUsername } from "../support/http.ts";
import { ADMIN_TOKEN, startTestNode, type TestNode } from "../support/node.ts";
import { createTestPki, handshake, type TestPki } from "../support/tls.ts";

const password = "correct horse battery";

/** The node's "clearbox node started" log line, parsed. */
function startedLine(node: TestNode): Record<string, any> {
  const line = node.logs.find((l) => l.includes('"clearbox node started"'));
  if (!line) throw new Error("no start-up line logged");
  return JSON.parse(line);
}

describe("native TLS on the public and admin listeners", () => {
  let pki: TestPki;
  let admin: { certFile: string; keyFile: string };
  let node: TestNode;
  let dir: string;

  beforeAll(async () => {
    pki = createTestPki();
    admin = pki.issue("clearbox admin");
    dir = mkdtempSync(join(tmpdir(), "clearbox-tls-client-"));
    node = await startTestNode("pglite", {
      env: {
        TLS_CERT_FILE: pki.certFile,
        TLS_KEY_FILE: pki.keyFile,
        ADMIN_TLS_CERT_FILE: admin.certFile,
        ADMIN_TLS_KEY_FILE: admin.keyFile,
      },
    });
  });
  afterAll(async () => {
    await node?.teardown();
    pki?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the node's URLs are https and the start-up line names the bound addresses", () => {
    expect(node.url).toStartWith("https://127.0.0.1:");
    expect(node.adminUrl).toStartWith("https://127.0.0.1:");
    const line = startedLine(node);
    expect(line.listening.public).toBe(`127.0.0.1:${new URL(node.url).port}`);
    expect(line.listening.admin).toBe(`127.0.0.1:${new URL(node.adminUrl).port}`);
    expect(line.tls).toEqual({ public: true, admin: true });
  });

  test("the public listener refuses a TLS 1.2 handshake and completes a verified TLS 1.3 one", async () => {
    const port = Number(new URL(node.url).port);
    const old = await handshake(port, "tls1_2", pki.caFile);
    expect(old.established).toBe(false);
    // Refused for its version (alert 70), not for anything else.
    expect(old.output).toContain("alert protocol version");
    const current = await handshake(port, "tls1_3", pki.caFile);
    expect(current.output).toContain("Verification: OK");
    expect(current.output).toContain("Peer certificate: CN = localhost");
    expect(current).toMatchObject({ established: true, protocol: "TLSv1.3" });
  });

  test("the admin listener uses its own certificate, TLS 1.3 only, and still wants the token", async () => {
    const port = Number(new URL(node.adminUrl).port);
    const old = await handshake(port, "tls1_2", pki.caFile);
    expect(old.established).toBe(false);
    expect(old.output).toContain("alert protocol version");
    const current = await handshake(port, "tls1_3", pki.caFile);
    expect(current).toMatchObject({ established: true, protocol: "TLSv1.3" });
    expect(current.output).toContain("Peer certificate: CN = clearbox admin");
    const tls = { ca: pki.ca };
    const refused = await fetch(`${node.adminUrl}/metrics`, { tls });
    expect(refused.status).toBe(401);
    const metrics = await fetch(`${node.adminUrl}/metrics`, {
      tls,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(metrics.status).toBe(200);
  });

  test("a client that does not trust the CA is refused; plain HTTP gets no answer", async () => {
    // The test CA is trusted nowhere but in the `ca` options: Bun's default store refuses it.
    await expect(fetch(`${node.url}/healthz`)).rejects.toThrow();
    const plain = node.url.replace("https://", "http://");
    await expect(fetch(`${plain}/healthz`)).rejects.toThrow();
    const ok = await fetch(`${node.url}/healthz`, { tls: { ca: pki.ca } });
    expect(await ok.json()).toEqual({ status: "ok" });
  });

  test("two SDK clients trusting the test CA register over HTTPS and chat over WSS", async () => {
    const alice = ClearBoxClient.open({ serverUrl: node.url, storePath: join(dir, "a.db"), ca: pki.ca });
    const bob = ClearBoxClient.open({ serverUrl: node.url, storePath: join(dir, "b.db"), ca: pki.ca });
    try {
      await alice.register(uniqueUsername("alice"), password);
      await bob.register(uniqueUsername("bob"), password);
      const bobSocket = await bob.connect();
      const aliceSocket = await alice.connect();
      try {
        const received = new Promise<string>((resolve, reject) => {
          bobSocket.on("message", (frame) => {
            bob.decryptText({ from: frame.from, envelope: frame.envelope }).then(resolve, reject);
            bobSocket.ack([frame]);
          });
        });
        const answer = await aliceSocket.sendToUser(
          crypto.randomUUID(),
          bob.userId,
          await alice.encrypt(bob.userId, "over wss 7c1e"),
        );
        expect(answer.type).toBe("accepted");
        expect(await received).toBe("over wss 7c1e");
      } finally {
        aliceSocket.close();
        bobSocket.close();
      }
    } finally {
      alice.close();
      bob.close();
    }
  });

  test("control: the same openssl check completes TLS 1.2 against a listener that allows it", async () => {
    // Shows the refusals above come from the node's settings, not from this machine's openssl.
    const server = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      tls: { cert: readFileSync(pki.certFile, "utf8"), key: readFileSync(pki.keyFile, "utf8") },
      fetch: () => new Response("ok"),
    });
    try {
      const old = await handshake(Number(server.port), "tls1_2", pki.caFile);
      expect(old).toMatchObject({ established: true, protocol: "TLSv1.2" });
    } finally {
      server.stop(true);
    }
  });
});

/** An IPv4 address of this machine that is not loopback, if it has one. */
const externalAddress = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && a.family === "IPv4" && !a.internal)?.address;

describe("PUBLIC_HOST", () => {
  test.skipIf(!externalAddress)(
    "binds the public listener to that interface only (127.0.0.1: not reachable on another address)",
    async () => {
      const node = await startTestNode("pglite");
      try {
        const port = new URL(node.url).port;
        expect(startedLine(node).listening.public).toBe(`127.0.0.1:${port}`);
        expect((await fetch(`${node.url}/healthz`)).status).toBe(200);
        await expect(fetch(`http://${externalAddress}:${port}/healthz`)).rejects.toThrow();
      } finally {
        await node.teardown();
      }
    },
  );

  test.skipIf(!externalAddress)("0.0.0.0 listens on every interface and logs it as bound", async () => {
    const node = await startTestNode("pglite", { env: { PUBLIC_HOST: "0.0.0.0" } });
    try {
      const port = new URL(node.url).port;
      expect(node.url).toBe(`http://127.0.0.1:${port}`);
      expect(startedLine(node).listening.public).toBe(`0.0.0.0:${port}`);
      expect((await fetch(`http://${externalAddress}:${port}/healthz`)).status).toBe(200);
    } finally {
      await node.teardown();
    }
  });
});
