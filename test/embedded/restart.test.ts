import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { installedPgliteVersion, templateVersion } from "../../src/db/pglite-template.ts";
import { api } from "../support/http.ts";

const ROOT = resolve(import.meta.dir, "../..");

/**
 * Starts `src/main.ts` (what `npm start` runs) as its own process and waits for its "started" log
 * line. Start-up time is a benchmark figure (docs/BENCHMARKS.md), not asserted here.
 */
async function startServer(dataDir: string) {
  const proc = Bun.spawn([process.execPath, "run", "src/main.ts"], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATA_DIR: dataDir,
      PORT: "0",
      ADMIN_PORT: "0",
      NODE_ENV: "development",
      LOG_LEVEL: "info",
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const reader = proc.stdout.getReader();
  let buffered = "";
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += new TextDecoder().decode(value);
    const line = buffered.split("\n").find((l) => l.includes('"clearbox node started"'));
    if (line) {
      reader.releaseLock();
      const url = JSON.parse(line).url as string;
      // Keep draining stdout so the child never blocks on a full pipe.
      void proc.stdout.pipeTo(new WritableStream());
      const health = await fetch(`${url}/healthz`);
      return { proc, url, health };
    }
  }
  proc.kill();
  throw new Error(`server did not start: ${buffered}${await new Response(proc.stderr).text()}`);
}

describe("embedded default (no DATABASE_URL)", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "clearbox-embedded-"));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  test("the data directory is its owner's alone: a new one is made 0700, an open one closed to 0700", async () => {
    const fresh = join(dataDir, "fresh", "data");
    const open = join(dataDir, "open");
    mkdirSync(open);
    chmodSync(open, 0o755);
    expect(statSync(open).mode & 0o777).toBe(0o755);
    for (const dir of [fresh, open]) {
      const server = await startServer(dir);
      try {
        expect(server.health.status).toBe(200);
        // Password hashes, the receipt signing key, the envelope log and the signing secret are in there.
        expect(statSync(dir).mode & 0o777).toBe(0o700);
      } finally {
        server.proc.kill("SIGTERM");
        await server.proc.exited;
      }
    }
  }, 90_000);

  test("starts with no services, answers /healthz, and keeps accounts across a restart", async () => {
    const first = await startServer(dataDir);
    expect(first.health.status).toBe(200);
    const client = api(first.url);
    expect(
      (await client.post("/v1/accounts", { username: "persistent", password: "password123" })).status,
    ).toBe(201);
    first.proc.kill("SIGTERM");
    expect(await first.proc.exited).toBe(0);

    const second = await startServer(dataDir);
    try {
      const again = api(second.url);
      const login = await again.post("/v1/sessions", {
        username: "persistent",
        password: "password123",
        registrationId: 1,
      });
      expect(login.status).toBe(201);
      // The generated JWT secret persisted too: the token is accepted after the restart.
      expect((await again.get("/v1/devices", login.body.accessToken)).status).toBe(200);
      expect(
        (await again.post("/v1/accounts", { username: "persistent", password: "password123" })).status,
      ).toBe(409);
    } finally {
      second.proc.kill("SIGTERM");
      await second.proc.exited;
    }
  });

  test("a wrong configuration value stops the process with a message naming the variable", async () => {
    const proc = Bun.spawn([process.execPath, "run", "src/main.ts"], {
      cwd: ROOT,
      env: { ...process.env, DATA_DIR: dataDir, PORT: "eighty", RETENTION_DAYS: "0" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const code = await proc.exited;
    const stderr = await new Response(proc.stderr).text();
    expect(code).toBe(78);
    expect(stderr).toContain("PORT: expected a TCP port, 0-65535");
    expect(stderr).toContain("RETENTION_DAYS: expected whole days, 1-3650");
  });
});

describe("the pre-initialised PGlite data directory", () => {
  test("was made with the installed PGlite version (else fresh data dirs fall back to a slow initdb)", () => {
    // After upgrading @electric-sql/pglite, rebuild it: npm run db:template.
    expect(templateVersion()).toBe(installedPgliteVersion());
  });
});
