/**
 * Two processes on one account store (a running `chat` and a `send` or a second `chat` beside it):
 * a write that meets the other process's open write transaction waits for it instead of failing
 * with SQLITE_BUSY "database is locked", which a newcomer saw from a second `chat` on a store in use.
 * The lock is held by a separate process, as in real use; nothing here asserts a duration.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AccountStore } from "../../src/client/index.ts";

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** A process that opens `path`, takes SQLite's write lock, says "locked", holds it `holdMs`, then commits. */
function lockFromAnotherProcess(path: string, holdMs: number) {
  const script = `
    import { Database } from "bun:sqlite";
    const db = new Database(${JSON.stringify(path)});
    db.exec("begin immediate");
    db.exec("insert into meta (key, value) values ('held', '1') on conflict (key) do update set value = excluded.value");
    console.log("locked");
    await Bun.sleep(${holdMs});
    db.exec("commit");
    db.close();
  `;
  return Bun.spawn(["bun", "-e", script], { stdout: "pipe", stderr: "inherit" });
}

async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return text.trim();
}

describe("an account store shared by two processes", () => {
  test("a write and a new store opened during another process's write transaction wait for it, then succeed", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cb-store-busy-"));
    dirs.push(dir);
    const path = join(dir, "alice.db");
    const store = new AccountStore(path);
    store.set("before", 1);

    const locker = lockFromAnotherProcess(path, 700);
    expect(await firstLine(locker.stdout)).toBe("locked");
    // Synchronous: blocks until the other process commits (bun:sqlite), or throws SQLITE_BUSY without a busy timeout.
    store.set("during", 2);
    expect(await locker.exited).toBe(0);
    expect(store.get<number>("during")).toBe(2);
    expect(store.get<number>("held")).toBe(1);

    const second = lockFromAnotherProcess(path, 700);
    expect(await firstLine(second.stdout)).toBe("locked");
    const other = new AccountStore(path);
    other.set("from-second-store", 3);
    expect(await second.exited).toBe(0);
    expect(store.get<number>("from-second-store")).toBe(3);
    other.db.close();
    store.db.close();
  });
});
