import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClearBoxClient } from "../../src/client/index.ts";
import { startWebClient, type WebClient } from "../../src/webclient/server.ts";
import { uniqueUsername } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

type SafetyNumber = { deviceId: number; safetyNumber: string; verified: boolean; changed: boolean };

let node: TestNode;
let dir: string;
let web: WebClient;
const clients: ClearBoxClient[] = [];

beforeAll(async () => {
  node = await startTestNode("pglite");
  dir = mkdtempSync(join(tmpdir(), "clearbox-web-verify-"));
  // The local process's API only: no page is served in this test.
  web = await startWebClient({ storePath: join(dir, "alice.db"), serverUrl: node.url, assetsDir: dir });
});
afterAll(async () => {
  await web?.stop();
  for (const c of clients) c.close();
  await node?.teardown();
  rmSync(dir, { recursive: true, force: true });
});

/** A call to the local process, as the page makes it (the secret in `x-clearbox-secret`). */
async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const url = new URL(web.url);
  const res = await fetch(new URL(path, url), {
    method,
    headers: {
      "x-clearbox-secret": url.searchParams.get("secret") ?? "",
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Alice's numbers with Bob once she holds keys for `devices` of his devices (she sent to them). */
async function numbersFor(userId: string, devices: number): Promise<SafetyNumber[]> {
  for (let i = 0; i < 400; i++) {
    const { body } = await call("GET", `/api/safety/${userId}`);
    if (body.numbers.length >= devices) return body.numbers;
    await Bun.sleep(25);
  }
  throw new Error(`never held keys for ${devices} devices of ${userId}`);
}

/**
 * "Mark as verified" in the browser client trusted every key held for the contact, whatever the
 * page had shown: a device the server added while the user compared (a key the user never saw)
 * was verified too. The page now sends the numbers it showed, and only those are trusted, as the
 * CLI's `/verify <user> confirm` does.
 */
test("verifying trusts only the devices whose numbers the page showed; a device added since stays unverified", async () => {
  const bobName = uniqueUsername("bob");
  const password = "correct horse battery";
  const phone = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
  clients.push(phone);
  await phone.register(bobName, password, "phone");
  expect((await call("POST", "/api/register", { username: uniqueUsername("alice"), password })).status).toBe(
    200,
  );
  const bob = phone.userId;
  expect((await call("POST", `/api/conversations/${bob}`, { text: "hello" })).status).toBe(200);
  const shown = await numbersFor(bob, 1);
  expect(shown.map((n) => n.deviceId)).toEqual([phone.deviceId]);

  // While Alice compares, a second device appears on Bob's account; her next message reaches it.
  const laptop = ClearBoxClient.open({ serverUrl: node.url, storePath: ":memory:" });
  clients.push(laptop);
  await laptop.login(bobName, password, "laptop");
  expect((await call("POST", `/api/conversations/${bob}`, { text: "again" })).status).toBe(200);
  await numbersFor(bob, 2);

  // Refused before anything is marked: no numbers, or numbers that are not a list of what was shown.
  for (const body of [
    {},
    { compared: [] },
    { compared: [{ deviceId: phone.deviceId }] },
    { compared: "all" },
  ]) {
    expect((await call("POST", `/api/safety/${bob}/verify`, body)).status).toBe(400);
  }
  expect((await numbersFor(bob, 2)).every((n) => !n.verified)).toBe(true);

  const compared = shown.map(({ deviceId, safetyNumber }) => ({ deviceId, safetyNumber }));
  const verified = await call("POST", `/api/safety/${bob}/verify`, { compared });
  expect(verified.status).toBe(200);
  expect(verified.body.left).toEqual([laptop.deviceId]);
  const state = Object.fromEntries(
    (verified.body.numbers as SafetyNumber[]).map((n) => [n.deviceId, n.verified]),
  );
  expect(state).toEqual({ [phone.deviceId]: true, [laptop.deviceId]: false });
});
