/**
 * docs/PROTOCOL.md and README's configuration table held to the code, both ways: every route a
 * node serves is documented and every documented route is served (on a real embedded node), every
 * close code, error code and client frame type of the page is the one `src/protocol/` defines, and
 * every environment variable the configuration reads is in README's table and no other, and
 * README's list of audit actions is exactly the actions the code writes.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ENV_VARIABLES } from "../../src/config/index.ts";
import { CloseCode } from "../../src/protocol/close-codes.ts";
import { ERROR_STATUS, UNSUPPORTED_MEDIA_TYPE } from "../../src/protocol/errors.ts";
import { Ack, Auth, DirectSend, GroupSend, Ping, PresenceWatch } from "../../src/protocol/frames.ts";
import { startTestNode, type TestNode } from "../support/node.ts";

const ROOT = resolve(import.meta.dir, "../..");
const protocol = readFileSync(resolve(ROOT, "docs/PROTOCOL.md"), "utf8");
const readme = readFileSync(resolve(ROOT, "README.md"), "utf8");

/** The text of a `## ` section (up to the next `## `), by the start of its heading. */
function section(text: string, heading: string): string {
  const start = text.indexOf(`\n## ${heading}`);
  if (start < 0) throw new Error(`no section "## ${heading}"`);
  const end = text.indexOf("\n## ", start + 1);
  return text.slice(start, end < 0 ? undefined : end);
}

/** `"<METHOD> <path>"` of each table row of `text` that starts with a route, query strings dropped. */
function documentedRoutes(text: string): string[] {
  const routes = [...text.matchAll(/^\| `(GET|POST|PUT|DELETE|PATCH) (\/[^`?\s]*)[^`]*` \|/gm)].map(
    ([, method, path]) => `${method} ${path}`,
  );
  return [...new Set(routes)].sort();
}

/** First cells of the table rows under a line, until the table ends. */
function tableFirstCells(text: string, after: string): string[] {
  const start = text.indexOf(after);
  if (start < 0) throw new Error(`no "${after}"`);
  const cells: string[] = [];
  let inTable = false;
  for (const line of text.slice(start).split("\n").slice(1)) {
    if (line.startsWith("|")) {
      inTable = true;
      cells.push(line.split("|")[1]?.trim() ?? "");
    } else if (inTable) break;
  }
  return cells.filter((cell) => !/^-+$/.test(cell.replaceAll(" ", "")));
}

describe("docs/PROTOCOL.md against a running node", () => {
  let node: TestNode;
  beforeAll(async () => {
    node = await startTestNode("pglite");
  });
  afterAll(async () => {
    await node?.teardown();
  });

  test("the public listener serves exactly the routes the HTTP API, sign-in and WebSocket sections list", () => {
    const documented = documentedRoutes(section(protocol, "HTTP API"));
    // The WebSocket is documented by its heading.
    expect(protocol).toContain("\n## WebSocket `GET /v1/ws`");
    expect(node.routes.public).toEqual([...documented, "GET /v1/ws"].sort());
  });

  test("the admin listener serves exactly the routes the admin RPC section lists (its OIDC logout only with OIDC_ISSUER)", () => {
    const documented = documentedRoutes(section(protocol, "Admin RPC"));
    expect(documented).toContain("POST /admin/v1/oidc/logout");
    // This node runs without an identity provider, so the OIDC logout is not mounted (see src/node.ts).
    expect(node.routes.admin).toEqual(documented.filter((route) => route !== "POST /admin/v1/oidc/logout"));
  });

  test("an undocumented path is a 404 on both listeners (the route lists above are what is served)", async () => {
    const pub = await fetch(`${node.url}/v1/not-a-route`);
    expect(pub.status).toBe(404);
    const admin = await fetch(`${node.adminUrl}/admin/v1/not-a-route`, {
      headers: { authorization: `Bearer ${node.config.adminToken}` },
    });
    expect(admin.status).toBe(404);
  });
});

describe("docs/PROTOCOL.md against src/protocol", () => {
  test("the close code table lists exactly CloseCode's codes", () => {
    const documented = tableFirstCells(protocol, "Close codes (`src/protocol/close-codes.ts`)")
      .slice(1) // the header row
      .map(Number);
    expect(documented.every(Number.isInteger)).toBe(true);
    expect(documented.sort((a, b) => a - b)).toEqual(Object.values(CloseCode).sort((a, b) => a - b));
  });

  test("the error table pairs each code with the status ERROR_STATUS gives it (and invalid with 415)", () => {
    const rows = [...section(protocol, "Errors").matchAll(/^\| `([a-z_]+)` \| (\d{3}) \|/gm)].map(
      ([, code, status]) => `${code} ${status}`,
    );
    const expected = [
      ...Object.entries(ERROR_STATUS).map(([code, status]) => `${code} ${status}`),
      `invalid ${UNSUPPORTED_MEDIA_TYPE}`,
    ];
    expect(rows.sort()).toEqual(expected.sort());
  });

  test("the client → server frames are exactly the frame types src/protocol/frames.ts checks", () => {
    const ws = section(protocol, "WebSocket");
    const block = ws.slice(ws.indexOf("Client → server:"), ws.indexOf("Server → client:"));
    const documented = [...new Set([...block.matchAll(/\{"type":"([a-z.]+)"/g)].map(([, type]) => type))];
    const schemas = [DirectSend, GroupSend, Ack, PresenceWatch, Ping, Auth];
    const coded = [...new Set(schemas.map((schema) => schema.properties.type.const as string))];
    expect(documented.sort()).toEqual(coded.sort());
  });
});

describe("README's configuration table against src/config", () => {
  test("it names every variable the configuration reads, and no other", () => {
    const table = section(readme, "Configuration");
    const names = new Set<string>();
    for (const line of table.split("\n")) {
      if (!line.startsWith("| `")) continue;
      for (const [, name] of (line.split("|")[1] ?? "").matchAll(/`([A-Z][A-Z0-9_]*)`/g))
        names.add(name as string);
    }
    expect([...names].sort()).toEqual([...ENV_VARIABLES].sort());
  });
});

/** Every `.ts` file under `dir`, recursively. */
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? sources(join(dir, entry.name))
      : entry.name.endsWith(".ts")
        ? [join(dir, entry.name)]
        : [],
  );
}

describe("README's audit actions against src/", () => {
  // A DPO searches the audit log by these names: one the code never writes finds nothing, and one
  // it writes that README does not name is an entry nobody knows to look for.
  test("the audit paragraph names every action an entry is written with, and no other", () => {
    const written = new Set<string>();
    for (const file of sources(resolve(ROOT, "src"))) {
      for (const [, action] of readFileSync(file, "utf8").matchAll(/\baction: "([a-z_.]+)"/g))
        written.add(action as string);
    }
    const start = readme.indexOf("**Audit log**");
    const paragraph = readme.slice(start, readme.indexOf("- *Pseudonyms*", start));
    const named = new Set<string>();
    for (const [, name] of paragraph.matchAll(/`([a-z_]+(?:\.[a-z_]+)*)`/g)) {
      if (written.has(name as string) || /\./.test(name as string)) named.add(name as string);
    }
    expect(written.size).toBeGreaterThan(10);
    expect([...named].sort()).toEqual([...written].sort());
  });
});
