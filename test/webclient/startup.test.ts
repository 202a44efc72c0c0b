import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const MAIN = resolve(import.meta.dir, "../../src/webclient/main.ts");
const dir = mkdtempSync(join(tmpdir(), "clearbox-webclient-start-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * `npm run client:web` on a fresh clone builds the page first, and used to do it silently:
 * the newcomer saw nothing for those seconds. A build (here forced with --rebuild) is announced on
 * stderr before anything else, and stdout still holds just the address to open.
 */
test("client:web says it is building the page before the address, on stderr", async () => {
  const proc = Bun.spawn(
    [
      process.execPath,
      "run",
      MAIN,
      "--store",
      join(dir, "fresh.db"),
      "--server",
      "http://127.0.0.1:9",
      "--rebuild",
    ],
    { stdout: "pipe", stderr: "pipe", env: { ...process.env } },
  );
  let out = "";
  const decoder = new TextDecoder();
  try {
    const reader = proc.stdout.getReader();
    while (!/open http:\/\/127\.0\.0\.1:\d+\/\?secret=/.test(out)) {
      const { value, done } = await reader.read();
      if (done) break;
      out += decoder.decode(value);
    }
  } finally {
    proc.kill("SIGTERM");
  }
  await proc.exited;
  const err = await new Response(proc.stderr).text();
  expect(err).toContain("building the page into");
  expect(err).toContain("web/dist");
  expect(out).toMatch(/^ClearBox client for .*fresh\.db: open http:\/\/127\.0\.0\.1:\d+\/\?secret=\S+\n$/);
});
