import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Api, api, loginDevice, registerAndLogin } from "../support/http.ts";
import { startTestNode, type TestNode } from "../support/node.ts";
import { TestSocket, waitUntil } from "../support/ws.ts";

/**
 * The answer to a WebSocket upgrade of `/v1/ws` with `token`, read off the wire: the status line and
 * headers of a refusal, or 101 for an upgrade (the socket is then closed at once).
 */
async function upgradeStatus(
  baseUrl: string,
  token: string,
  forwardedFor?: string,
): Promise<{ status: number; retryAfter?: string }> {
  const { hostname, port } = new URL(baseUrl);
  const request = [
    "GET /v1/ws HTTP/1.1",
    `Host: ${hostname}:${port}`,
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    `Authorization: Bearer ${token}`,
    ...(forwardedFor ? [`X-Forwarded-For: ${forwardedFor}`] : []),
    "",
    "",
  ].join("\r\n");
  let text = "";
  const head = await new Promise<string>((resolve, reject) => {
    void Bun.connect({
      hostname,
      port: Number(port),
      socket: {
        open: (socket) => {
          socket.write(request);
        },
        data: (socket, chunk) => {
          text += chunk.toString();
          if (text.includes("\r\n\r\n")) {
            socket.end();
            resolve(text);
          }
        },
        error: (_socket, error) => reject(error),
        close: () => resolve(text),
      },
    }).catch(reject);
  });
  const status = Number(head.split(" ")[1]);
  const retryAfter = /\r\nretry-after:\s*(\d+)/i.exec(head)?.[1];
  return { status, retryAfter };
}

/** Opens and closes one socket of the device; resolves once the node has forgotten it. */
async function connectOnce(node: TestNode, token: string): Promise<void> {
  const socket = await TestSocket.open(node.url, token);
  await socket.close();
  await waitUntil(() => node.gateway.connections === 0, "the node to forget the socket");
}

describe("WebSocket connect budgets (WS_CONNECTS_PER_DEVICE)", () => {
  let node: TestNode;
  let client: Api;

  beforeAll(async () => {
    // The test's own address is a trusted proxy: an upgrade naming another in X-Forwarded-For is
    // counted under that one.
    node = await startTestNode("pglite", {
      env: { WS_CONNECTS_PER_DEVICE: "3", TRUSTED_PROXIES: "127.0.0.1" },
    });
    client = api(node.url);
  });
  afterAll(() => node?.teardown());

  test("a device's upgrades past its budget in a minute are refused 429 with Retry-After, before the token's device is read", async () => {
    const me = await registerAndLogin(client);
    for (let i = 0; i < 3; i++) await connectOnce(node, me.accessToken);
    const refused = await upgradeStatus(node.url, me.accessToken);
    expect(refused.status).toBe(429);
    expect(Number(refused.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(refused.retryAfter)).toBeLessThanOrEqual(60);
    expect(node.gateway.connections).toBe(0);
    // Revoked since: its token is refused by the database read (401) only within the budget. Past it
    // the answer is still 429: the budget is spent before the database is read.
    await node.sessions.revokeDevice(me.userId, me.deviceId);
    expect((await upgradeStatus(node.url, me.accessToken)).status).toBe(429);
    // Another device of the same account has its own budget.
    const other = await loginDevice(client, me, { registrationId: 77 });
    expect((await upgradeStatus(node.url, other.accessToken)).status).toBe(101);
  });

  test("a revoked token spends nothing of its device's budget: its address's refusals are counted instead", async () => {
    // Someone kept a token of the device from before a password change (or a refresh reuse)
    // revoked it; it stays well signed until it expires. Counted against the device, its
    // upgrades locked the device itself out for the token's whole lifetime.
    const me = await registerAndLogin(client);
    const old = me.accessToken;
    await node.sessions.revokeDevice(me.userId, me.deviceId);
    const fresh = await loginDevice(client, me, { deviceId: me.deviceId });
    const attacker = "203.0.113.9";
    const answers: number[] = [];
    for (let i = 0; i < 6; i++) answers.push((await upgradeStatus(node.url, old, attacker)).status);
    expect(answers).toEqual([401, 401, 401, 429, 429, 429]);
    // Past its refusals the address is refused before the device is read, a current token included.
    expect((await upgradeStatus(node.url, fresh.accessToken, attacker)).status).toBe(429);
    // The device, from its own address, has its whole budget.
    for (let i = 0; i < 3; i++) await connectOnce(node, fresh.accessToken);
    expect((await upgradeStatus(node.url, fresh.accessToken)).status).toBe(429);
    expect(node.gateway.connections).toBe(0);
  });

  test("an account's devices together connect at most ten devices' worth a minute", async () => {
    const me = await registerAndLogin(client);
    const tokens = [me.accessToken];
    for (let i = 0; i < 10; i++)
      tokens.push((await loginDevice(client, me, { registrationId: 100 + i })).accessToken);
    // Ten devices spend the account's 30 (3 each); the eleventh device has budget of its own left.
    for (const token of tokens.slice(0, 10)) for (let i = 0; i < 3; i++) await connectOnce(node, token);
    const refused = await upgradeStatus(node.url, tokens[10] as string);
    expect(refused.status).toBe(429);
    expect(node.gateway.connections).toBe(0);
    // Another account is not affected.
    const bob = await registerAndLogin(client);
    expect((await upgradeStatus(node.url, bob.accessToken)).status).toBe(101);
  });

  test("revoked tokens spend nothing of the budgets the account's current tokens use", async () => {
    // Someone holding the tokens of eleven devices (the account's password was theirs): the owner
    // changes the password and signs every other device out. The old access tokens, unexpired,
    // spent the re-keyed device's budget (same device id) and, ten of them, the whole account's,
    // keeping the owner's devices off WebSocket for the tokens' remaining lifetime.
    const me = await registerAndLogin(client);
    const revoked = [me.accessToken];
    for (let i = 0; i < 10; i++)
      revoked.push((await loginDevice(client, me, { registrationId: 200 + i })).accessToken);
    const changed = await client.post(
      "/v1/me/password",
      { currentPassword: me.password, newPassword: "another horse battery", logoutDevices: true },
      me.accessToken,
    );
    expect(changed.status).toBe(200);
    const current = (changed.body as { accessToken: string }).accessToken;
    expect((await upgradeStatus(node.url, me.accessToken)).status).toBe(401);
    // From the holder's address (their refusals are counted there, past which it is refused).
    for (const token of revoked)
      for (let i = 0; i < 4; i++)
        expect([401, 429]).toContain((await upgradeStatus(node.url, token, "203.0.113.10")).status);
    expect((await upgradeStatus(node.url, current)).status).toBe(101);
    const fresh = await loginDevice(client, { username: me.username, password: "another horse battery" });
    expect((await upgradeStatus(node.url, fresh.accessToken)).status).toBe(101);
  });
});
