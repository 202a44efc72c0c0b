import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import {
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  SignJWT,
} from "jose";
import Provider from "oidc-provider";

/** A private RS256 signing key in JWK form, as the provider is configured with it. */
async function signingKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair("RS256", { extractable: true });
  return { ...(await exportJWK(privateKey)), kid: randomUUID(), alg: "RS256", use: "sig" };
}

/** What the test provider's accounts look like: `sub` is the login typed into its form. */
export type ProviderClaims = Record<string, unknown>;

/**
 * A real, certified OpenID provider (`oidc-provider`) started in the test, on its own port:
 * authorization code with PKCE, device authorization grant, back-channel logout, and its
 * development login and consent forms (any login name is an account whose `sub` is that name).
 *
 * Between ClearBox and the provider sits nothing but this process's HTTP server; `tamperTokens`
 * lets a test rewrite what the token endpoint answers (to show ClearBox refusing a bad ID token),
 * `tamperErrors` its error answers, and `rotateKeys` replaces the provider's signing key.
 */
export class TestProvider {
  /** Rewrites the token endpoint's JSON body before ClearBox sees it; unset: untouched. */
  tamperTokens: ((body: Record<string, unknown>) => Promise<Record<string, unknown>>) | undefined;
  /**
   * Rewrites the token endpoint's error bodies (`{error, error_description}`, status kept) before
   * ClearBox sees them, e.g. to answer `slow_down` (RFC 8628 §3.5), which `oidc-provider` never
   * sends; unset: untouched.
   */
  tamperErrors: ((body: Record<string, unknown>) => Record<string, unknown>) | undefined;
  /** Requests the token endpoint has had (a device sign-in's polls among them). */
  tokenRequests = 0;
  /** `kid`s of the ID tokens the token endpoint sent, in order. */
  readonly idTokenKids: string[] = [];
  /** Claims per `sub`; a `sub` not listed gets `preferred_username` = the `sub`. */
  readonly accounts = new Map<string, ProviderClaims>();
  private provider!: Provider;
  private handler!: ReturnType<Provider["callback"]>;
  private keys: JWK[] = [];
  private clientJwks: JWK[] | undefined;

  private constructor(
    readonly issuer: string,
    readonly clientId: string,
    readonly clientSecret: string,
    private readonly clearboxUrl: string,
    private readonly server: Server,
  ) {}

  /** `clientJwks`: the client authenticates with private_key_jwt by these public keys, not a secret. */
  static async start(clearboxUrl: string, options: { clientJwks?: JWK[] } = {}): Promise<TestProvider> {
    // Bound before the issuer URL is made from its port: no other process can take the port between.
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", resolve);
    });
    const port = (server.address() as AddressInfo).port;
    const provider = new TestProvider(
      `http://127.0.0.1:${port}`,
      "clearbox",
      `secret-${randomUUID()}`,
      clearboxUrl,
      server,
    );
    provider.clientJwks = options.clientJwks;
    provider.keys = [await signingKey()];
    provider.build();
    server.on("request", (req, res) => provider.handle(req, res));
    return provider;
  }

  private build(): void {
    this.provider = new Provider(this.issuer, {
      clients: [
        {
          client_id: this.clientId,
          ...(this.clientJwks
            ? { token_endpoint_auth_method: "private_key_jwt", jwks: { keys: this.clientJwks } }
            : { client_secret: this.clientSecret, token_endpoint_auth_method: "client_secret_basic" }),
          redirect_uris: [`${this.clearboxUrl}/v1/oidc/callback`],
          grant_types: ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
          response_types: ["code"],
          backchannel_logout_uri: `${this.clearboxUrl}/v1/oidc/backchannel-logout`,
          backchannel_logout_session_required: true,
        },
      ],
      jwks: { keys: this.keys },
      // oidc-provider gives its outgoing requests (the back-channel logout POST) 2.5 s; on a loaded
      // test machine with a busy shared PostgreSQL the revocation behind it took longer, so the
      // provider gave up and the test failed on the provider's clock rather than on ClearBox.
      fetch: (url, options) => globalThis.fetch(url, { ...options, signal: AbortSignal.timeout(15_000) }),
      features: {
        devInteractions: { enabled: true },
        deviceFlow: { enabled: true },
        backchannelLogout: { enabled: true },
      },
      pkce: { required: () => true },
      claims: { openid: ["sub"], profile: ["preferred_username", "name"] },
      // The username claim goes into the ID token itself (not only userinfo), as Keycloak does.
      conformIdTokenClaims: false,
      findAccount: async (_ctx: unknown, sub: string) => ({
        accountId: sub,
        claims: async () => ({ sub, preferred_username: sub, ...this.accounts.get(sub) }),
      }),
    });
    this.handler = this.provider.callback();
  }

  /** Serves the provider; token endpoint answers go through `tamperTokens` when it is set. */
  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.url?.startsWith("/token")) {
      this.tokenRequests++;
      const end = res.end.bind(res);
      const chunks: Buffer[] = [];
      const write = (chunk: unknown) => {
        if (chunk) chunks.push(Buffer.from(chunk as Uint8Array));
      };
      res.write = ((chunk: unknown) => {
        write(chunk);
        return true;
      }) as typeof res.write;
      res.end = ((chunk?: unknown) => {
        write(typeof chunk === "function" ? undefined : chunk);
        void this.rewrite(Buffer.concat(chunks).toString("utf8")).then((body) => {
          if (!res.headersSent) res.setHeader("content-length", Buffer.byteLength(body));
          end(body);
        });
        return res;
      }) as typeof res.end;
    }
    this.handler(req, res);
  }

  private async rewrite(text: string): Promise<string> {
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(text);
    } catch {
      return text;
    }
    if (typeof body.error === "string")
      return this.tamperErrors ? JSON.stringify(this.tamperErrors(body)) : text;
    if (typeof body.id_token !== "string") return text;
    this.idTokenKids.push(String(decodeProtectedHeader(body.id_token).kid));
    if (!this.tamperTokens) return text;
    return JSON.stringify(await this.tamperTokens(body));
  }

  /** Signs `claims` with the provider's current signing key (a token only the provider could make). */
  async sign(claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
    const jwk = this.keys[0];
    return new SignJWT(claims)
      .setProtectedHeader({ alg: "RS256", kid: jwk.kid, ...header })
      .sign(await importJWK(jwk, "RS256"));
  }

  /** An ID token re-signed by the provider with some claims changed (iss, aud, exp, nonce…). */
  async resign(idToken: string, changes: Record<string, unknown>): Promise<string> {
    return this.sign({ ...decodeJwt(idToken), ...changes }, { typ: "JWT" });
  }

  /** Replaces the signing key: new tokens carry a `kid` that no relying party has seen yet. */
  async rotateKeys(): Promise<string> {
    this.keys = [await signingKey()];
    this.build();
    return String(this.keys[0].kid);
  }

  /** The provider's own back-channel logout of `sub` (and `sid`) to ClearBox, as an end-session would send it. */
  async backchannelLogout(sub: string, sid = randomUUID()): Promise<void> {
    const client = await this.provider.Client.find(this.clientId);
    if (!client) throw new Error("test client missing");
    // Not in @types/oidc-provider: the Client model method end-session uses to notify relying parties.
    await (
      client as unknown as { backchannelLogout(sub: string, sid: string): Promise<void> }
    ).backchannelLogout(sub, sid);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}

/** A cookie-keeping HTTP client that follows redirects by hand, as a browser would. */
export class TestBrowser {
  private readonly jar = new Map<string, Map<string, string>>();

  private store(url: URL, response: Response): void {
    const cookies = this.jar.get(url.host) ?? new Map<string, string>();
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(";");
      const at = pair.indexOf("=");
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim();
      const expired = attributes.some((a) => /^\s*max-age=0\s*$/i.test(a)) || value === "";
      if (expired) cookies.delete(name);
      else cookies.set(name, value);
    }
    this.jar.set(url.host, cookies);
  }

  /** One request, no redirect followed; cookies sent and kept per host. */
  async request(url: string | URL, init: { method?: string; form?: Record<string, string> } = {}) {
    const target = new URL(url);
    const headers: Record<string, string> = {};
    const cookies = this.jar.get(target.host);
    if (cookies?.size) headers.cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    let body: string | undefined;
    if (init.form) {
      headers["content-type"] = "application/x-www-form-urlencoded";
      body = new URLSearchParams(init.form).toString();
    }
    const response = await fetch(target, { method: init.method ?? "GET", headers, body, redirect: "manual" });
    this.store(target, response);
    return response;
  }

  /**
   * Follows redirects from `url` and fills the provider's forms (user code, login, consent,
   * device confirmation) until a redirect leads to a URL `stop` accepts (returned, not fetched) or
   * a page without a form (its text is returned).
   */
  async walk(
    url: string,
    options: { login: string; userCode?: string; stop: (url: URL) => boolean },
  ): Promise<{ stoppedAt?: URL; page?: string; status: number }> {
    let next: { url: URL; form?: Record<string, string> } = { url: new URL(url) };
    for (let hop = 0; hop < 30; hop++) {
      const response = await this.request(next.url, {
        method: next.form ? "POST" : "GET",
        form: next.form,
      });
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location) {
        const target = new URL(location, next.url);
        if (options.stop(target)) return { stoppedAt: target, status: response.status };
        next = { url: target };
        continue;
      }
      const page = await response.text();
      const form = parseForm(page);
      if (!form || response.status !== 200) return { page, status: response.status };
      const fields = { ...form.hidden };
      if (form.inputs.includes("login")) Object.assign(fields, { login: options.login, password: "any" });
      if (form.inputs.includes("user_code") && options.userCode) fields.user_code = options.userCode;
      next = { url: new URL(form.action, next.url), form: fields };
    }
    throw new Error("too many hops");
  }
}

/** The first form of a page: its action, hidden fields, and the names of its other inputs. */
function parseForm(
  html: string,
): { action: string; hidden: Record<string, string>; inputs: string[] } | undefined {
  const form = html.match(/<form[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/);
  if (!form) return undefined;
  const hidden: Record<string, string> = {};
  const inputs: string[] = [];
  for (const input of form[2].matchAll(/<input([^>]*)>/g)) {
    const name = input[1].match(/name="([^"]*)"/)?.[1];
    if (!name) continue;
    if (/type="hidden"/.test(input[1])) hidden[name] = input[1].match(/value="([^"]*)"/)?.[1] ?? "";
    else inputs.push(name);
  }
  return { action: form[1].replaceAll("&amp;", "&"), hidden, inputs };
}
