import { afterAll, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AccountStore } from "../../src/client/store.ts";

const dir = mkdtempSync(join(tmpdir(), "clearbox-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const modeOf = (path: string) => statSync(path).mode & 0o777;

test("a new key store is readable by its owner only, its WAL too", () => {
  const path = join(dir, "new.db");
  const store = new AccountStore(path);
  store.db.exec("create table t (x); insert into t values (1);");
  expect(modeOf(path)).toBe(0o600);
  expect(existsSync(`${path}-wal`)).toBe(true);
  expect(modeOf(`${path}-wal`)).toBe(0o600);
  store.db.close();
});

test("a key store an earlier version left world-readable is closed to its owner when opened", () => {
  const path = join(dir, "old.db");
  writeFileSync(path, "");
  chmodSync(path, 0o644);
  expect(modeOf(path)).toBe(0o644);
  const store = new AccountStore(path);
  expect(modeOf(path)).toBe(0o600);
  store.db.close();
});

test("a store copied to its file (an in-memory store after the first sign-in) is the owner's only from the start", () => {
  const path = join(dir, "copied.db");
  const memory = new AccountStore(":memory:");
  memory.set("k", "v");
  memory.copyTo(path);
  // Before any AccountStore opened it (which would close it to its owner): VACUUM INTO made it 0644.
  expect(modeOf(path)).toBe(0o600);
  memory.db.close();
  const reopened = new AccountStore(path);
  expect(reopened.get<string>("k")).toBe("v");
  reopened.db.close();
});
