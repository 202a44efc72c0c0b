/**
 * `SocketReauthentication` sends an `auth` frame when the access token is due and, until the server
 * confirms it with `auth.ok`, sends it again every `confirmMs`: a frame the server refused
 * (`error rate_limited`, which names no frame, when large sends spent the device's budget just
 * before the renewal) otherwise left the socket to be closed 4440 at the old token's expiry. No
 * node is needed: the token source is the SDK's own interface, here a counter standing in for a
 * refresh that moves `renewAt` a minute ahead.
 */
import { expect, test } from "bun:test";
import { SocketReauthentication } from "../../src/client/reauth.ts";
import type { ClientFrame } from "../../src/protocol/index.ts";

async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

test("an auth frame the server does not confirm is sent again; auth.ok stops that until the next renewal", async () => {
  let renewAt = Date.now();
  let refreshes = 0;
  const tokens = {
    accessToken: async () => {
      refreshes++;
      renewAt = Date.now() + 60_000;
      return "token";
    },
    get renewAt() {
      return renewAt;
    },
  };
  const sent: ClientFrame[] = [];
  const reauth = new SocketReauthentication(tokens, (frame) => sent.push(frame), 20).start();
  try {
    // Unconfirmed (refused or lost): sent again, the token being still valid.
    await until(() => sent.length >= 3, "the auth frame sent again");
    expect(sent.every((frame) => frame.type === "auth")).toBe(true);
    // Confirmed: nothing more until the token's renewAt, a minute ahead.
    reauth.acknowledged();
    const confirmedAt = sent.length;
    await Bun.sleep(100);
    expect(sent.length).toBe(confirmedAt);
    // A late or repeated auth.ok changes nothing.
    reauth.acknowledged();
    await Bun.sleep(50);
    expect(sent.length).toBe(confirmedAt);
    expect(refreshes).toBe(confirmedAt);
  } finally {
    reauth.stop();
  }
});
