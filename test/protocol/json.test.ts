import { describe, expect, test } from "bun:test";
import { isStorableText, MAX_JSON_DEPTH, readJson } from "../../src/protocol/json.ts";

const nestedObjects = (depth: number) => `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`;
const nestedArrays = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;

describe("readJson", () => {
  test("parses ordinary JSON, nesting up to the limit included", () => {
    expect(readJson('{"type":"ping"}')).toEqual({ ok: true, value: { type: "ping" } });
    const deepest = readJson(nestedArrays(MAX_JSON_DEPTH));
    expect(deepest.ok).toBe(true);
    expect(readJson(nestedObjects(MAX_JSON_DEPTH)).ok).toBe(true);
  });

  test("refuses nesting one level past the limit, for objects and arrays alike, naming the limit", () => {
    for (const text of [nestedObjects(MAX_JSON_DEPTH + 1), nestedArrays(MAX_JSON_DEPTH + 1)]) {
      expect(readJson(text)).toEqual({ ok: false, problem: `nests deeper than ${MAX_JSON_DEPTH} levels` });
    }
  });

  test("refuses the issue's hostile shapes without parsing them: 12,000 nested objects, a 100,000-deep array", () => {
    expect(readJson(nestedObjects(12_000)).ok).toBe(false);
    // JSON.parse alone would overflow the stack on this one (the 500 of the issue).
    expect(readJson(nestedArrays(100_000))).toEqual({ ok: false, problem: "nests deeper than 32 levels" });
  });

  test("brackets inside strings do not count as nesting", () => {
    const text = JSON.stringify({ name: "[".repeat(1000) + "{".repeat(1000) });
    expect(readJson(text).ok).toBe(true);
  });

  test("refuses NUL and lone surrogates whether escaped or raw, in values and in keys", () => {
    const unstorable = [
      '{"deviceName":"phone\\u0000"}',
      '{"deviceName":"phone\u0000"}',
      '{"name":"\\ud800"}',
      '{"name":"\\udc00x"}',
      '{"name":"\\ud800\\u0041"}',
      '{"name":"a\ud800"}',
      '{"name":"\udc00"}',
      '{"k\\u0000":1}',
      '["ok","\\uDBFF"]',
    ];
    for (const text of unstorable) {
      const reading = readJson(text);
      expect({ text, ok: reading.ok }).toEqual({ text, ok: false });
      if (!reading.ok) expect(reading.problem).toContain("cannot be stored");
    }
  });

  test("accepts surrogate pairs (escaped or raw) and other escapes", () => {
    for (const text of ['{"n":"\\ud83d\\ude00"}', '{"n":"😀"}', '{"n":"\\n\\t\\"\\\\\\/\\u00e9"}']) {
      expect({ text, ok: readJson(text).ok }).toEqual({ text, ok: true });
    }
  });

  test("malformed JSON is refused as such, without quoting it", () => {
    for (const text of ['{"username": "abc", ', "", "nul", '"\\u12"', '"\\']) {
      expect(readJson(text)).toEqual({ ok: false, problem: "not valid JSON" });
    }
  });
});

describe("isStorableText", () => {
  test("holds for ordinary text and surrogate pairs, not for NUL or lone surrogates", () => {
    expect(isStorableText("phone 📱 é")).toBe(true);
    expect(isStorableText("phone\u0000")).toBe(false);
    expect(isStorableText("\ud800")).toBe(false);
    expect(isStorableText("x\udc00")).toBe(false);
  });
});
