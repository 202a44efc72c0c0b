// Run by `npm ci`/`npm install` (the root package's postinstall). Guards postgres.js's nextWrite
// against a connection whose socket is already gone: postgres 3.4.9 schedules a small write with
// setImmediate, and when the server dies first, `socket.write` on null throws from the immediate,
// an uncaughtException no caller can catch, which takes the node down (seen in this project's
// PostgreSQL kill -9 fault test). Upstream: porsager/postgres issues #1066, #1154, #1208; the guard
// is the one proposed in pull request #1209 (settle the waiting queries with CONNECTION_CLOSED).
// Idempotent; never fails the install: a postgres version without the old line is left alone.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const MARK = "clearbox: nextWrite guard";
const OLD = "  function nextWrite(fn) {\n    const x = socket.write(chunk, fn)";
const NEW = `  function nextWrite(fn) {
    // ${MARK} (porsager/postgres#1208, as proposed in #1209)
    if (socket === null) {
      nextWriteTimer !== null && clearImmediate(nextWriteTimer)
      chunk = nextWriteTimer = null
      error(Errors.connection('CONNECTION_CLOSED', options))
      return false
    }
    const x = socket.write(chunk, fn)`;

const root = join(
  import.meta.dirname ?? new URL(".", import.meta.url).pathname,
  "..",
  "node_modules",
  "postgres",
);
for (const dir of ["src", "cjs/src", "cf/src"]) {
  const file = join(root, dir, "connection.js");
  try {
    if (!existsSync(file)) continue;
    const text = readFileSync(file, "utf8");
    if (text.includes(MARK)) continue;
    if (!text.includes(OLD)) {
      console.warn(`patch-postgres: ${dir}/connection.js has no unguarded nextWrite; left as is`);
      continue;
    }
    writeFileSync(file, text.replace(OLD, NEW));
    console.log(`patch-postgres: guarded nextWrite in postgres/${dir}/connection.js`);
  } catch (error) {
    console.warn(`patch-postgres: ${dir}/connection.js not patched: ${error}`);
  }
}
