import { describe, expect, test } from "bun:test";
import { murmur3 } from "../../actors/murmur3.ts";

/**
 * Packs little-endian byte pairs into UTF-16 code units: `murmur3` hashes a string's code units
 * two per 32-bit block, which is MurmurHash3_x86_32 over the string's UTF-16LE bytes. Only
 * vectors with an even number of bytes can be written as such a string.
 */
function fromBytes(bytes: readonly number[]): string {
  if (bytes.length % 2 !== 0) throw new Error("a UTF-16 string holds an even number of bytes");
  let text = "";
  for (let i = 0; i < bytes.length; i += 2) text += String.fromCharCode(bytes[i] | (bytes[i + 1] << 8));
  return text;
}

function asciiBytes(text: string): number[] {
  return [...text].map((char) => char.charCodeAt(0));
}

// Known answers for MurmurHash3_x86_32 (Austin Appleby's SMHasher reference), as published in
// Boost.Hash2's test/murmur3_32.cpp (github.com/pdimov/hash2, now boostorg/hash2), which takes
// them from the SMHasher-checked table at https://stackoverflow.com/questions/14747343. The
// vectors of an odd byte count there ("abc", "\x21", ...) have no UTF-16 form and are left out.
const VECTORS: { name: string; bytes: number[]; seed: number; hash: number }[] = [
  { name: "no bytes, seed 0", bytes: [], seed: 0, hash: 0 },
  { name: "no bytes, seed 1", bytes: [], seed: 1, hash: 0x514e28b7 },
  { name: "no bytes, seed 0xffffffff (unsigned seed)", bytes: [], seed: 0xffffffff, hash: 0x81f16f39 },
  { name: "ff ff ff ff (unsigned block math)", bytes: [0xff, 0xff, 0xff, 0xff], seed: 0, hash: 0x76293b50 },
  { name: "21 43 65 87 (little-endian blocks)", bytes: [0x21, 0x43, 0x65, 0x87], seed: 0, hash: 0xf55b516b },
  {
    name: "21 43 65 87, seed 0x5082edee",
    bytes: [0x21, 0x43, 0x65, 0x87],
    seed: 0x5082edee,
    hash: 0x2362f9de,
  },
  { name: "21 43 (two-byte tail)", bytes: [0x21, 0x43], seed: 0, hash: 0xa0f7b07a },
  { name: "00 00 00 00 (zero bytes still count)", bytes: [0, 0, 0, 0], seed: 0, hash: 0x2362f9de },
  { name: "00 00", bytes: [0, 0], seed: 0, hash: 0x30f4c306 },
  {
    name: "56 ASCII bytes (14 blocks)",
    bytes: asciiBytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
    seed: 0,
    hash: 0xee925b90,
  },
];

describe("murmur3", () => {
  for (const vector of VECTORS) {
    test(`matches the MurmurHash3_x86_32 known answer: ${vector.name}`, () => {
      expect(murmur3(fromBytes(vector.bytes), vector.seed)).toBe(vector.hash);
    });
  }

  test("returns an unsigned 32-bit integer for any input", () => {
    for (const text of ["user:1", "group:ünïcödé", "\u{1f600}", "x".repeat(1001)]) {
      const hash = murmur3(text);
      expect(Number.isInteger(hash)).toBe(true);
      expect(hash).toBeGreaterThanOrEqual(0);
      expect(hash).toBeLessThanOrEqual(0xffffffff);
    }
  });
});
