import { createHash, randomBytes } from "node:crypto";
import { eq, sql } from "drizzle-orm";
import type { JWK } from "jose";
import { StartupError } from "../../src/config/index.ts";
import { accounts, oidcIdentities } from "../../src/db/schema.ts";
import { BootExited, bootOnFreePorts, type PortSource } from "../support/free-port.ts";
import type { Api } from "../support/http.ts";
import { type Backend, startTestNode, type TestNode } from "../support/node.ts";
import { TestBrowser, TestProvider } from "../support/oidc-provider.ts";

/** Where the tests' browser app lives: registered in OIDC_CLIENT_REDIRECT_URIS, never fetched. */
export const APP_RETURN_URI = "https://app.example/signed-in";

/** A client's PKCE pair (RFC 7636 S256). */
export function pkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString("base64url");
  return { verifier, challenge: createHash("sha256").update(verifier).digest("base64url") };
}

/** The environment that makes a test node a relying party of `provider`. */
export function oidcEnv(provider: TestProvider, clearboxUrl: string): Record<string, string> {
  return {
    OIDC_ISSUER: provider.issuer,
    OIDC_CLIENT_ID: provider.clientId,
    OIDC_CLIENT_SECRET: provider.clientSecret,
    OIDC_REDIRECT_URI: `${clearboxUrl}/v1/oidc/callback`,
    OIDC_CLIENT_REDIRECT_URIS: APP_RETURN_URI,
  };
}

/**
 * A test identity provider and a node that is its relying party, on the port the provider was told
 * (its redirect URI): `options` go to `startTestNode`, `options.env` over `oidcEnv`'s (a function
 * of the provider when it needs the provider's values); with `clientJwks` the client authenticates
 * with private_key_jwt by those keys and the node gets no client secret. The node's port is chosen
 * before the node binds it (the provider must know it first): a node refused because another
 * process took the port meanwhile (`PORT: … already in use`) is replaced, with a new provider, on a
 * fresh port (`bootOnFreePorts`; `ports` is where ports come from, default `freePort`). The caller
 * tears both down.
 */
export async function startWithProvider(
  backend: Backend,
  options: Omit<NonNullable<Parameters<typeof startTestNode>[1]>, "env"> & {
    env?: Record<string, string> | ((provider: TestProvider) => Record<string, string>);
    clientJwks?: JWK[];
    ports?: PortSource;
  } = {},
): Promise<{ node: TestNode; provider: TestProvider }> {
  const { env, clientJwks, ports, ...nodeOptions } = options;
  return bootOnFreePorts(async (next) => {
    const port = await next();
    const url = `http://127.0.0.1:${port}`;
    const provider = await TestProvider.start(url, { clientJwks });
    try {
      const { OIDC_CLIENT_SECRET, ...withoutSecret } = oidcEnv(provider, url);
      const node = await startTestNode(backend, {
        ...nodeOptions,
        env: {
          PORT: String(port),
          ...(clientJwks ? withoutSecret : { ...withoutSecret, OIDC_CLIENT_SECRET }),
          ...(typeof env === "function" ? env(provider) : env),
        },
      });
      return { node, provider };
    } catch (error) {
      await provider.close();
      if (error instanceof StartupError && error.variable === "PORT" && /already in use/.test(error.message))
        throw new BootExited(error.message);
      throw error;
    }
  }, ports);
}

/** The browser flow up to the provider's redirect back to ClearBox's callback (not yet followed). */
export async function browserToCallback(node: TestNode, login: string, options: { prompt?: "login" } = {}) {
  const browser = new TestBrowser();
  const { verifier, challenge } = pkce();
  const start = new URL("/v1/oidc/authorize", node.url);
  start.searchParams.set("redirect_uri", APP_RETURN_URI);
  start.searchParams.set("code_challenge", challenge);
  start.searchParams.set("code_challenge_method", "S256");
  if (options.prompt) start.searchParams.set("prompt", options.prompt);
  const walked = await browser.walk(start.href, {
    login,
    stop: (url) => url.pathname === "/v1/oidc/callback",
  });
  if (!walked.stoppedAt)
    throw new Error(`the provider did not redirect back: ${walked.status} ${walked.page}`);
  return { browser, callback: walked.stoppedAt, verifier };
}

/** The whole browser flow: returns ClearBox's answer at the callback, and the sign-in code when it redirected. */
export async function browserSignIn(node: TestNode, login: string, options: { prompt?: "login" } = {}) {
  const { browser, callback, verifier } = await browserToCallback(node, login, options);
  const response = await browser.request(callback);
  const location = response.headers.get("location");
  const code = location?.startsWith(APP_RETURN_URI) ? new URL(location).searchParams.get("code") : null;
  return { response, location, code, verifier, state: callback.searchParams.get("state") };
}

/** The device flow: start, the user enters the code at the provider, ClearBox is polled until done. */
export async function deviceSignIn(client: Api, login: string) {
  const started = await client.post("/v1/oidc/device", {});
  if (started.status !== 200)
    throw new Error(`device start: ${started.status} ${JSON.stringify(started.body)}`);
  const { deviceCode, userCode, verificationUri, interval } = started.body;
  const page = await new TestBrowser().walk(verificationUri, { login, userCode, stop: () => false });
  // Polled for up to 15 s (it was 4 s: a bound on the wait, not what is tested).
  for (let attempt = 0; attempt < 75; attempt++) {
    const polled = await client.post("/v1/oidc/device/poll", { deviceCode, interval });
    if (polled.status !== 200) return { polled, page, userCode, deviceCode };
    if (polled.body.status === "done") return { polled, page, userCode, deviceCode, code: polled.body.code };
    await Bun.sleep(200);
  }
  throw new Error("device sign-in never finished");
}

/** Rows that name this subject or username: what a refused sign-in must not have created. */
export async function traces(node: TestNode, issuer: string, subject: string, username: string) {
  const { db } = node.database;
  const links = await db.select().from(oidcIdentities).where(eq(oidcIdentities.subject, subject));
  const named = await db.select().from(accounts).where(eq(accounts.username, username));
  const [{ n }] = await db
    .execute(sql`select count(*)::int as n from oidc_sign_in_codes`)
    .then((r: any) => r.rows ?? r);
  return { links: links.filter((l) => l.issuer === issuer).length, accounts: named.length, codes: Number(n) };
}
