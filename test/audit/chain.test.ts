import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { type ChainContent, chainHash, GENESIS_HASH } from "../../src/audit/chain.ts";

const README = readFileSync(resolve(import.meta.dir, "../../README.md"), "utf8");
const PSEUDONYM = "6f1d0c3b9a2e4f5d8c7b6a5e4d3c2b1a";

/** README's test vector: the first entry of a chain, its RFC 8785 bytes and its hash. */
const VECTOR = {
  content: {
    at: "2026-01-15T09:30:00.000Z",
    action: "session.login",
    actor: PSEUDONYM,
    subject: PSEUDONYM,
    details: { deviceId: 1, newDevice: true },
  } satisfies ChainContent,
  canonical: `{"action":"session.login","actor":"${PSEUDONYM}","at":"2026-01-15T09:30:00.000Z","details":{"deviceId":1,"newDevice":true},"subject":"${PSEUDONYM}"}`,
  hash: "2ff044182e2b5e6b440ef722f4360fff186c6554530b020857ed333513e42d7e",
};

/**
 * A chain of four entries hashed by the serialiser the chain used before RFC 8785 (sorted keys,
 * JSON.stringify primitives), recorded when the switch was made: the kinds of values the chain
 * holds (strings, integers, booleans, null, nested objects, arrays, non-ASCII text, integer-like
 * keys). Chains written before the switch must still verify.
 */
const BEFORE_THE_SWITCH: { content: ChainContent; hash: string }[] = [
  { content: VECTOR.content, hash: VECTOR.hash },
  {
    content: {
      at: "2026-01-15T09:30:00.250Z",
      action: "admin.call",
      actor: "admin",
      subject: null,
      details: { method: "GET", route: "/admin/v1/audit", status: 200 },
    },
    hash: "cf66377ccd51cfebc4df6be6f25bf07bb47146a6f8c305dadc56b4dd491c99a7",
  },
  {
    content: {
      at: "2026-01-15T09:31:07.000Z",
      action: "erasure.completed",
      actor: "system",
      subject: PSEUDONYM,
      details: {},
    },
    hash: "c8d15f47ded3e696d723ee200b0b73e948975c88876f9ad0246819138cc8bf89",
  },
  {
    content: {
      at: "2026-01-15T09:32:00.000Z",
      action: "test.shapes",
      actor: "system",
      subject: null,
      details: {
        counts: [0, 1, -2, 9007199254740991],
        nested: { z: null, a: 'ö€😀\n"\\', "10": "x", "9": [true, false, { b: 1, a: 2 }] },
      },
    },
    hash: "511bf919330f384f54a6bb0e8183c1136242f5018b016812eed34b38472576af",
  },
];

describe("audit chain hashes (RFC 8785)", () => {
  test("README's vector: the canonical bytes and their SHA-256 after the genesis hash", () => {
    const hashed = createHash("sha256").update(`${GENESIS_HASH}\n${VECTOR.canonical}`).digest("hex");
    expect(hashed).toBe(VECTOR.hash);
    expect(chainHash(GENESIS_HASH, VECTOR.content)).toBe(VECTOR.hash);
    // The README shows the same bytes and hash, so a reader can check them with sha256sum.
    expect(README).toContain(VECTOR.canonical);
    expect(README).toContain(VECTOR.hash);
  });

  test("README's sha256sum recipe gives the vector's hash", () => {
    const recipe = README.match(/```sh\n\s*(printf[^`]*\| sha256sum)\n/)?.[1];
    expect(recipe).toBeDefined();
    const run = Bun.spawnSync(["bash", "-euo", "pipefail", "-c", recipe as string]);
    expect(run.exitCode).toBe(0);
    expect(run.stdout.toString()).toStartWith(VECTOR.hash);
  });

  test("entries hashed before the switch to RFC 8785 still verify, link by link", () => {
    let prevHash = GENESIS_HASH;
    for (const entry of BEFORE_THE_SWITCH) {
      expect(chainHash(prevHash, entry.content)).toBe(entry.hash);
      prevHash = entry.hash;
    }
  });

  test("key order does not change a hash; any content change does", () => {
    const reordered = { ...VECTOR.content, details: { newDevice: true, deviceId: 1 } };
    expect(chainHash(GENESIS_HASH, reordered)).toBe(VECTOR.hash);
    expect(
      chainHash(GENESIS_HASH, { ...VECTOR.content, details: { deviceId: 2, newDevice: true } }),
    ).not.toBe(VECTOR.hash);
    expect(chainHash("1".repeat(64), VECTOR.content)).not.toBe(VECTOR.hash);
  });

  test("details JCS cannot represent are refused instead of hashed as something else", () => {
    expect(() => chainHash(GENESIS_HASH, { ...VECTOR.content, details: { n: Number.NaN } })).toThrow();
    expect(() => chainHash(GENESIS_HASH, { ...VECTOR.content, details: { s: "\ud800" } })).toThrow();
  });
});
