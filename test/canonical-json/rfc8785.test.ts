/**
 * Pins the `canonicalize` package (the RFC 8785 serialiser behind erasure receipts and the audit
 * chain) to the RFC's own published examples: §3.2.2–3.2.4 and Appendix B. A version that drifts
 * from the RFC would change every receipt's signed bytes and every chain hash; this file says so
 * before a deploy does.
 */
import { describe, expect, test } from "bun:test";
import canonicalize from "canonicalize";

/** RFC 8785 §3.2.2: the sample object as its JSON text (escapes and all). */
const SECTION_3_2_2_INPUT = String.raw`{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`;

/**
 * RFC 8785 §3.2.3: the canonical form of that sample (the RFC writes € as \u20ac). Built in parts:
 * Bun 1.4.5's transpiler rewrites non-ASCII characters inside String.raw into \uXXXX escapes.
 */
const SECTION_3_2_3_OUTPUT =
  '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"' +
  "\u20ac" +
  String.raw`$\u000f\nA'B\"\\\\\"/"}`;

/** RFC 8785 §3.2.4: the UTF-8 bytes of that canonical form, in hex. */
const SECTION_3_2_4_BYTES = `
  7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72
  75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a
  5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31
  65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37
  5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30
  30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d`;

/** RFC 8785 §3.2.3: property names sort by UTF-16 code units, so the emoji (D83D DE00) precedes U+FB33. */
const SORTING_INPUT = String.raw`{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`;
const SORTED_VALUES = [
  "Carriage Return",
  "One",
  "Control",
  "Latin Small Letter O With Diaeresis",
  "Euro Sign",
  "Emoji: Grinning Face",
  "Hebrew Letter Dalet With Dagesh",
];

/** RFC 8785 Appendix B: IEEE-754 double (hex) → its JSON form. */
const APPENDIX_B: [string, string][] = [
  ["0000000000000000", "0"],
  ["8000000000000000", "0"],
  ["0000000000000001", "5e-324"],
  ["8000000000000001", "-5e-324"],
  ["7fefffffffffffff", "1.7976931348623157e+308"],
  ["ffefffffffffffff", "-1.7976931348623157e+308"],
  ["4340000000000000", "9007199254740992"],
  ["c340000000000000", "-9007199254740992"],
  ["4430000000000000", "295147905179352830000"],
  ["44b52d02c7e14af5", "9.999999999999997e+22"],
  ["44b52d02c7e14af6", "1e+23"],
  ["44b52d02c7e14af7", "1.0000000000000001e+23"],
  ["444b1ae4d6e2ef4e", "999999999999999700000"],
  ["444b1ae4d6e2ef4f", "999999999999999900000"],
  ["444b1ae4d6e2ef50", "1e+21"],
  ["3eb0c6f7a0b5ed8c", "9.999999999999997e-7"],
  ["3eb0c6f7a0b5ed8d", "0.000001"],
  ["41b3de4355555553", "333333333.3333332"],
  ["41b3de4355555554", "333333333.33333325"],
  ["41b3de4355555555", "333333333.3333333"],
  ["41b3de4355555556", "333333333.3333334"],
  ["41b3de4355555557", "333333333.33333343"],
  ["becbf647612f3696", "-0.0000033333333333333333"],
  ["43143ff3c1cb0959", "1424953923781206.2"],
];

/** Appendix B's NaN and Infinity rows: JCS has no form for them, so serialising must fail. */
const APPENDIX_B_ERRORS = ["7fffffffffffffff", "7ff0000000000000"];

function double(hex: string): number {
  return Buffer.from(hex, "hex").readDoubleBE(0);
}

describe("canonicalize against RFC 8785's published examples", () => {
  test("§3.2.2's sample comes out as §3.2.3 prints it and as §3.2.4's UTF-8 bytes", () => {
    const canonical = canonicalize(JSON.parse(SECTION_3_2_2_INPUT));
    expect(canonical).toBe(SECTION_3_2_3_OUTPUT);
    expect(Buffer.from(canonical as string, "utf8").toString("hex")).toBe(
      SECTION_3_2_4_BYTES.replace(/\s+/g, ""),
    );
  });

  test("§3.2.3's property names sort by UTF-16 code units, not by code point or locale", () => {
    const canonical = canonicalize(JSON.parse(SORTING_INPUT)) as string;
    // Read the order off the text: JSON.parse would put the integer-like name "1" first again.
    const values = [...canonical.matchAll(/":"([^"]+)"/g)].map((m) => m[1]);
    expect(values).toEqual(SORTED_VALUES);
    expect(canonical.startsWith(String.raw`{"\r":"Carriage Return","1":"One",`)).toBe(true);
  });

  test.each(APPENDIX_B)("Appendix B: %s serialises as %s", (hex, expected) => {
    expect(canonicalize(double(hex))).toBe(expected);
    expect(canonicalize([double(hex)])).toBe(`[${expected}]`);
  });

  test.each(APPENDIX_B_ERRORS)("Appendix B: %s (NaN or Infinity) is refused", (hex) => {
    expect(() => canonicalize({ n: double(hex) })).toThrow();
  });

  test("a lone surrogate is refused: it has no UTF-8 form (§3.2.2.2 requires valid Unicode)", () => {
    expect(() => canonicalize({ s: "\ud800" })).toThrow();
    expect(canonicalize({ s: "\ud83d\ude00" })).toBe('{"s":"😀"}');
  });
});
