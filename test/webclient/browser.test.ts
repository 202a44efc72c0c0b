import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import type { Subprocess } from "bun";
import { type Browser, chromium, type Page } from "playwright-core";
import { ClearBoxClient } from "../../src/client/index.ts";
import { ensureBuilt } from "../../src/webclient/build.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

const MAIN = resolve(import.meta.dir, "../../src/webclient/main.ts");
const CHROMIUM = "/usr/bin/chromium";
const password = "correct horse battery";
/** Where the screens are saved as PNG when set (docs/screenshots is made from this test). */
const SCREENSHOTS = process.env.CLEARBOX_SCREENSHOTS;

/** One `npm run client:web` process: its URL (with the secret) read from its first line. */
class WebClientProcess {
  url = "";
  private proc?: Subprocess<"ignore", "pipe", "pipe">;
  output = "";

  constructor(
    readonly storePath: string,
    readonly serverUrl: string,
  ) {}

  async start(): Promise<string> {
    const proc = Bun.spawn(
      [process.execPath, "run", MAIN, "--store", this.storePath, "--server", this.serverUrl],
      {
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    this.proc = proc;
    void new Response(proc.stderr).text().then((text) => {
      this.output += text;
    });
    const reader = proc.stdout.getReader();
    const decoder = new TextDecoder();
    let out = "";
    const deadline = Date.now() + 60_000;
    while (!/open (http\S+)/.test(out)) {
      const { value, done } = await reader.read();
      if (done || Date.now() > deadline) throw new Error(`client:web did not start: ${out}${this.output}`);
      out += decoder.decode(value);
    }
    reader.releaseLock();
    this.url = /open (http\S+)/.exec(out)?.[1] ?? "";
    return this.url;
  }

  async stop(): Promise<void> {
    this.proc?.kill("SIGTERM");
    await this.proc?.exited;
  }
}

async function signUp(page: Page, url: string, username: string): Promise<void> {
  await page.goto(url);
  await page.getByLabel("username").fill(username);
  await page.getByLabel("password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByTestId("me").waitFor();
}

async function shot(page: Page, name: string): Promise<void> {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

const texts = (page: Page) => page.getByTestId("message").locator(".text").allTextContents();

describe.skipIf(!existsSync(CHROMIUM) && !process.env.CI)("browser sample client (React) in Chromium", () => {
  let node: TestNode;
  let dir: string;
  let browser: Browser;
  const processes: WebClientProcess[] = [];

  beforeAll(async () => {
    await ensureBuilt({ quiet: true });
    node = await startTestNode("pglite");
    dir = mkdtempSync(join(tmpdir(), "clearbox-web-"));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    for (const p of processes) await p.stop();
    await node?.teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the local process refuses calls without its secret, from another host name, and serves the page", async () => {
    const web = new WebClientProcess(join(dir, "guard.db"), node.url);
    processes.push(web);
    const url = new URL(await web.start());
    const base = `${url.protocol}//${url.host}`;
    expect((await fetch(`${base}/api/state`)).status).toBe(401);
    const secret = url.searchParams.get("secret") ?? "";
    expect(
      (await fetch(`${base}/api/state`, { headers: { "x-clearbox-secret": `${secret}x` } })).status,
    ).toBe(401);
    const ok = await fetch(`${base}/api/state`, { headers: { "x-clearbox-secret": secret } });
    expect(await ok.json()).toEqual({ account: null, status: "signed-out" });
    const rebound = await fetch(`${base}/api/state`, {
      headers: { "x-clearbox-secret": secret, host: "evil.example" },
    });
    expect(rebound.status).toBe(421);
    const page = await fetch(`${base}/`);
    expect(await page.text()).toContain('<div id="root">');
    // No other site may frame the page (clickjacking), and a malformed path is a 400, not a 500.
    expect(page.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    expect(page.headers.get("x-frame-options")).toBe("DENY");
    expect((await fetch(`${base}/%E0%A4%A`)).status).toBe(400);
    // Nothing is written before a sign-up succeeded.
    expect(existsSync(web.storePath)).toBe(false);
    await web.stop();
  });

  test("an id the server chose goes into the local API's path as one encoded segment, never as a route of its own", async () => {
    // A hostile server's invitation names a group id that, put into the path as it is, made the
    // page's Decline a `POST /api/erase?x=/decline` (the browser resolves the `../`). The local
    // process passes invitations through; here the page's GET of them is answered with that id.
    const web = new WebClientProcess(join(dir, "hostile-id.db"), node.url);
    processes.push(web);
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const hostileId = "../../api/erase?x=";
    await page.route("**/api/invitations", (route) =>
      route.request().method() === "GET"
        ? route.fulfill({
            json: { invitations: [{ groupId: hostileId, name: "evil", invitedBy: "mallory" }] },
          })
        : route.continue(),
    );
    const posts: { path: string; status: Promise<number | undefined> }[] = [];
    page.on("request", (request) => {
      if (request.method() !== "POST") return;
      posts.push({
        path: new URL(request.url()).pathname,
        status: request.response().then((response) => response?.status()),
      });
    });
    await signUp(page, await web.start(), "hostile-id");
    await page.getByTestId("invitation-evil").getByRole("button", { name: "Decline" }).click();
    const deadline = Date.now() + 30_000;
    while (!posts.some((p) => p.path.includes("decline") || p.path.startsWith("/api/erase"))) {
      if (Date.now() > deadline) throw new Error(`no decline request: ${posts.map((p) => p.path)}`);
      await Bun.sleep(50);
    }
    const sent = posts.filter((p) => p.path !== "/api/register");
    expect(sent.map((p) => p.path)).toEqual([`/api/invitations/${encodeURIComponent(hostileId)}/decline`]);
    // The local process refuses the id (not a UUID) before calling the server.
    expect(await sent[0].status).toBe(400);
    await page.close();
    await web.stop();
  });

  test("creating an account says so on its button while it runs, instead of only greying the buttons out", async () => {
    // A sign-up takes seconds (keys made, the password hashed with argon2id): the page held the
    // request here, so what it shows meanwhile is checked without racing it.
    const web = new WebClientProcess(join(dir, "busy.db"), node.url);
    processes.push(web);
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let arrived = false;
    await page.route("**/api/register", async (route) => {
      arrived = true;
      await held;
      await route.continue();
    });
    await page.goto(await web.start());
    await page.getByLabel("username").fill(`busy${Date.now() % 100000}`);
    await page.getByLabel("password", { exact: true }).fill(password);
    await page.getByRole("button", { name: "Create account" }).click();
    const deadline = Date.now() + 30_000;
    while (!arrived) {
      if (Date.now() > deadline) throw new Error("the page never sent its sign-up");
      await Bun.sleep(20);
    }
    const creating = page.getByRole("button", { name: "Creating account…" });
    await creating.waitFor();
    expect(await creating.isDisabled()).toBe(true);
    expect(await page.getByRole("button", { name: "Sign in" }).isDisabled()).toBe(true);
    release();
    await page.getByTestId("me").waitFor();
    await page.close();
    await web.stop();
  });

  test("Download my data saves the server's export as clearbox-export-<username>.json, as the CLI names it", async () => {
    const web = new WebClientProcess(join(dir, "export.db"), node.url);
    processes.push(web);
    const context = await browser.newContext({
      acceptDownloads: true,
      viewport: { width: 1100, height: 700 },
    });
    const page = await context.newPage();
    const username = `exporter${Date.now() % 100000}`;
    await signUp(page, await web.start(), username);
    await page.getByTestId("account-settings").click();
    const download = page.waitForEvent("download", { timeout: 30_000 });
    await page.getByRole("button", { name: "Download my data (export)" }).click();
    const saved = await download;
    expect(saved.suggestedFilename()).toBe(`clearbox-export-${username}.json`);
    const archive = JSON.parse(await Bun.file((await saved.path()) as string).text());
    expect(archive.format).toBe("clearbox-export/1");
    expect(JSON.stringify(archive)).toContain(username);
    await context.close();
    await web.stop();
  });

  test("a group of three: invitations accepted in the page, then everyone's messages reach the two others", async () => {
    // A fresh node per run: plain names, as the screenshots in docs/ show them.
    const people = ["ana", "ben", "cleo"].map((prefix) => ({
      name: prefix,
      web: new WebClientProcess(join(dir, `${prefix}-group.db`), node.url),
    }));
    processes.push(...people.map((p) => p.web));
    const pageErrors: string[] = [];
    const pages: Page[] = [];
    for (const person of people) {
      const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
      page.on("pageerror", (error) => pageErrors.push(error.message));
      await signUp(page, await person.web.start(), person.name);
      pages.push(page);
    }
    const [a, b, c] = pages;
    const group = "trio";
    await a.getByLabel("group name").fill(group);
    await a.getByLabel("group members").fill(`${people[1].name} ${people[2].name}`);
    await a.getByRole("button", { name: "Create group" }).click();
    await a
      .getByTestId("conversation-title")
      .filter({ hasText: `#${group}` })
      .waitFor();
    for (const page of [b, c]) {
      await page.getByTestId(`invitation-${group}`).getByRole("button", { name: "Accept" }).click();
      await page
        .getByTestId("conversation-title")
        .filter({ hasText: `#${group}` })
        .waitFor();
    }
    await a.getByLabel("message").fill("hello trio");
    await a.getByRole("button", { name: "Send" }).click();
    await b.getByText("hello trio").waitFor();
    await c.getByText("hello trio").waitFor();
    await c.getByLabel("message").fill("carol here");
    await c.getByRole("button", { name: "Send" }).click();
    await a.getByText("carol here").waitFor();
    await b.getByText("carol here").waitFor();
    // Presence: the members became contacts and are watched; all three are online.
    for (const other of [people[0], people[2]]) {
      await b.locator(`[data-testid="presence-${other.name}"][data-online="true"]`).waitFor();
    }
    await shot(b, "group");
    expect(await texts(b)).toEqual(["hello trio", "carol here"]);

    // Cleo leaves; Ana's next message reaches Ben under a new sender key, and not Cleo.
    await c.getByRole("button", { name: "Leave" }).click();
    await c.getByTestId(`group-${group}`).waitFor({ state: "detached" });
    await a.getByLabel("message").fill("just the two of us");
    await a.getByRole("button", { name: "Send" }).click();
    await b.getByText("just the two of us").waitFor();
    expect(await c.getByText("just the two of us").count()).toBe(0);
    expect(pageErrors).toEqual([]);
    for (const person of people) await person.web.stop();
  });

  test("two people chat both ways, see presence and unread counts; offline messages arrive in order; a key change warns; erasure shows a verified receipt", async () => {
    const alice = { name: "alice", web: new WebClientProcess(join(dir, "alice.db"), node.url) };
    const bob = { name: "bob", web: new WebClientProcess(join(dir, "bob.db"), node.url) };
    processes.push(alice.web, bob.web);
    const a = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const b = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    // A page error (React unmounts the app on one) fails the test instead of a later timeout.
    const pageErrors: string[] = [];
    for (const page of [a, b]) page.on("pageerror", (error) => pageErrors.push(error.message));
    await a.goto(await alice.web.start());
    await shot(a, "sign-in");
    await signUp(a, alice.web.url, alice.name);
    await signUp(b, await bob.web.start(), bob.name);
    // Presence is shared by people who share a group both accepted (docs/PROTOCOL.md, "Presence"):
    // Alice makes a group with Bob in the page, and Bob accepts the invitation in his.
    await a.getByLabel("group name").fill("pair");
    await a.getByLabel("group members").fill(bob.name);
    await a.getByRole("button", { name: "Create group" }).click();
    await a.getByTestId("conversation-title").filter({ hasText: "#pair" }).waitFor();
    await b.getByTestId("invitation-pair").getByRole("button", { name: "Accept" }).click();
    await b.getByTestId("conversation-title").filter({ hasText: "#pair" }).waitFor();

    // Alice adds Bob by username and writes; Bob sees an unread count, then the message.
    await a.getByLabel("add contact").fill(bob.name);
    await a.getByRole("button", { name: "Add" }).click();
    await a.getByTestId("conversation-title").filter({ hasText: bob.name }).waitFor();
    await a.getByLabel("message").fill("hi bob, it's alice");
    await a.getByRole("button", { name: "Send" }).click();
    await b.getByTestId(`unread-${alice.name}`).filter({ hasText: "1" }).waitFor();
    await b.getByTestId(`contact-${alice.name}`).click();
    await b.getByText("hi bob, it's alice").waitFor();
    await b.getByLabel("message").fill("hello alice");
    await b.getByRole("button", { name: "Send" }).click();
    await a.getByText("hello alice").waitFor();
    expect(await texts(a)).toEqual(["hi bob, it's alice", "hello alice"]);
    await a.locator(`[data-testid="presence-${bob.name}"][data-online="true"]`).waitFor();
    await shot(a, "chat");

    // Safety numbers: the same digits on both screens.
    await a.getByRole("button", { name: "Safety number" }).click();
    const aDigits = await a.getByTestId("safety-number").textContent();
    await b.getByRole("button", { name: "Safety number" }).click();
    expect(await b.getByTestId("safety-number").textContent()).toBe(aDigits);
    expect(aDigits).toMatch(/^(\d{5} ){11}\d{5}$/);
    await shot(a, "safety-number");
    await a.getByRole("button", { name: "Mark as verified" }).click();
    await a.getByTestId("conversation-title").waitFor();

    // Bob's client is closed; Alice writes three messages; he comes back and reads them in order.
    await b.close();
    await bob.web.stop();
    await a.locator(`[data-testid="presence-${bob.name}"][data-online="false"]`).waitFor();
    for (const text of ["one", "two", "three"]) {
      await a.getByLabel("message").fill(text);
      await a.getByRole("button", { name: "Send" }).click();
      await a.getByText(text, { exact: true }).waitFor();
    }
    const b2 = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    await b2.goto(await bob.web.start());
    await b2.getByTestId(`unread-${alice.name}`).filter({ hasText: "3" }).waitFor();
    await b2.getByTestId(`contact-${alice.name}`).click();
    await b2.getByText("three", { exact: true }).waitFor();
    expect(await texts(b2)).toEqual(["hi bob, it's alice", "hello alice", "one", "two", "three"]);

    // Bob's device gets a new identity key (a reinstall, or a server swapping keys): Alice is warned.
    await b2.close();
    await bob.web.stop();
    const reinstalled = ClearBoxClient.open({ storePath: bob.web.storePath });
    reinstalled.store.set(
      "identityKeyPair",
      Buffer.from(IdentityKeyPair.generate().serialize()).toString("base64"),
    );
    reinstalled.store.db.exec("delete from sessions");
    await reinstalled.bootstrapKeys(5);
    reinstalled.close();
    const b3 = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    await b3.goto(await bob.web.start());
    await b3.getByTestId(`contact-${alice.name}`).click();
    await b3.getByLabel("message").fill("new phone, same bob");
    await b3.getByRole("button", { name: "Send" }).click();
    await a.getByText("new phone, same bob").waitFor();
    await a.getByTestId("key-change-warning").waitFor();
    await shot(a, "key-change-warning");
    await a.getByTestId("key-change-warning").getByRole("button", { name: "Verify" }).click();
    await a.getByRole("button", { name: "Mark as verified" }).click();
    await a.getByTestId("conversation-title").waitFor();
    expect(await a.getByTestId("key-change-warning").count()).toBe(0);

    // Alice erases her account and sees the receipt, checked against the server's published key.
    await a.getByTestId("account-settings").click();
    await a.getByLabel("erase password").fill(password);
    await a.getByRole("button", { name: "Erase" }).click();
    await a.getByTestId("receipt-check").waitFor({ timeout: 60_000 });
    expect(await a.getByTestId("receipt-check").textContent()).toContain("Receipt verified");
    await shot(a, "erasure-receipt");
    // The device's store went with the account; the page is back at sign-in.
    expect(existsSync(alice.web.storePath)).toBe(false);
    await a.getByRole("button", { name: "Done" }).click();
    await a.getByRole("button", { name: "Create account" }).waitFor();
    expect(pageErrors).toEqual([]);
  });

  test("a send the server refuses shows why: to an account erased since, unknown_recipient in words", async () => {
    const dora = new WebClientProcess(join(dir, "dora.db"), node.url);
    processes.push(dora);
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const pageErrors: string[] = [];
    page.on("pageerror", (error) => pageErrors.push(error.message));
    await signUp(page, await dora.start(), "dora");
    // Gus, on the SDK, is written to once (the page learns his device), then erases his account.
    const gus = ClearBoxClient.open({ storePath: ":memory:", serverUrl: node.url });
    try {
      await gus.register("gus", password);
      await page.getByLabel("add contact").fill("gus");
      await page.getByRole("button", { name: "Add" }).click();
      await page.getByTestId("conversation-title").filter({ hasText: "gus" }).waitFor();
      await page.getByLabel("message").fill("hello gus");
      await page.getByRole("button", { name: "Send" }).click();
      await page.getByTestId("message").filter({ hasText: "· sent" }).waitFor();
      const { erasureId } = await gus.http.eraseMe(password);
      const deadline = Date.now() + 60_000;
      while ((await gus.http.erasure(erasureId)).status !== "done") {
        if (Date.now() > deadline) throw new Error("Gus's erasure did not finish");
        await Bun.sleep(100);
      }
    } finally {
      gus.close();
    }
    await page.getByLabel("message").fill("still there?");
    await page.getByRole("button", { name: "Send" }).click();
    const failed = page.getByTestId("message").filter({ hasText: "still there?" });
    await failed.getByTestId("refusal").waitFor();
    expect(await failed.locator(".meta").textContent()).toContain(
      "· failed: unknown_recipient: no such account any more (erased, or never existed)",
    );
    // Away and back: the history keeps no reason, the page still shows the one it was given.
    await page.getByTestId("account-settings").click();
    await page.getByTestId("contact-gus").click();
    const reopened = page.getByTestId("message").filter({ hasText: "still there?" });
    await reopened.getByTestId("refusal").waitFor();
    expect(await reopened.locator(".meta").textContent()).toContain("· failed: unknown_recipient:");
    expect(pageErrors).toEqual([]);
    await dora.stop();
  });
});
