import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomUUID } from "node:crypto";
import type { StoredEnvelope } from "../../src/messaging/envelope.ts";
import { api, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

let node: TestNode;

beforeAll(async () => {
  node = await startTestNode("pglite");
});
afterAll(() => node?.teardown());

/** Reads the whole body; the error it ended with, if it was cut off. */
async function readAll(response: Response): Promise<{ text: string; failure: unknown }> {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { text, failure: null };
      text += decoder.decode(value, { stream: true });
    }
  } catch (error) {
    return { text, failure: error };
  }
}

/**
 * `GET /v1/me/export` streams the log in pages as the client reads (src/gdpr/export.ts), for as long
 * as a slow client takes. The device is revoked while its export runs (here: as the first page of
 * queued ciphertexts is read): no later page is read or sent, and the response is cut off. Before,
 * the export read and sent the rest of the log, rows arriving after the revocation included.
 */
test("an export whose device is revoked while it streams reads and sends no further page", async () => {
  const alice = await registerAndLogin(api(node.url));
  const friend = randomUUID();
  // 40 ciphertexts queued for alice's device: three pages of 16 (EXPORT_PAGE_ROWS.queued).
  const queued: StoredEnvelope[] = Array.from({ length: 40 }, (_, i) => ({
    id: randomUUID(),
    senderUser: friend,
    senderDevice: 1,
    recipientUser: alice.userId,
    recipientDevice: alice.deviceId,
    groupId: null,
    ts: Date.now() + i,
    type: 3,
    body: Buffer.from(`ciphertext ${i}`).toString("base64"),
  }));
  await node.log.append(queued);

  // The real read, and the revocation once the first page of queued ciphertexts is read.
  const read = node.log.undeliveredPage.bind(node.log);
  let pagesRead = 0;
  node.log.undeliveredPage = async (...args) => {
    const page = await read(...args);
    pagesRead++;
    if (pagesRead === 1) await node.sessions.revokeDevice(alice.userId, alice.deviceId);
    return page;
  };
  try {
    const response = await fetch(`${node.url}/v1/me/export`, {
      headers: { authorization: `Bearer ${alice.accessToken}` },
    });
    expect(response.status).toBe(200);
    const { text, failure } = await readAll(response);
    expect(failure).toBeInstanceOf(Error);
    expect(text).toContain('"queued":[');
    expect(() => JSON.parse(text)).toThrow();
    expect(pagesRead).toBe(1);
    // Nothing past the first page of queued ciphertexts went out.
    const sent = text.slice(text.indexOf('"queued":['));
    expect(sent).toContain(queued[15]?.id as string);
    expect(sent).not.toContain(queued[16]?.id as string);
  } finally {
    node.log.undeliveredPage = read;
  }
  expect(node.logs.join("")).toContain("export stopped mid-stream: its session was revoked");
});
