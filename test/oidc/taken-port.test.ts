import { afterAll, expect, test } from "bun:test";
import { holdPort, takenFirst } from "../support/free-port.ts";
import type { TestNode } from "../support/node.ts";
import type { TestProvider } from "../support/oidc-provider.ts";
import { browserSignIn, startWithProvider } from "./support.ts";

// The relying party's port is chosen before it binds (the provider must know its redirect URI
// first); another process may take it in between. Here it is taken for sure: the node must start on
// a fresh port with a provider told that port, and sign-ins must work there.
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
});

test("a relying party whose port another process took meanwhile starts on a fresh port its provider knows", async () => {
  const holder = await holdPort();
  cleanups.push(() => holder.release());
  let node: TestNode;
  let provider: TestProvider;
  ({ node, provider } = await startWithProvider("pglite", { ports: takenFirst(holder.port) }));
  cleanups.push(() => provider.close());
  cleanups.push(() => node.teardown());
  expect(new URL(node.url).port).not.toBe(String(holder.port));
  const signedIn = await browserSignIn(node, "taken_port_user");
  expect(signedIn.response.status).toBe(303);
  expect(signedIn.code).toBeTruthy();
}, 60_000);
