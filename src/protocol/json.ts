/**
 * The one JSON reader for everything a client sends (HTTP bodies and WebSocket frames,
 * docs/PROTOCOL.md): one linear scan that enforces the nesting limit and the text rule before
 * `JSON.parse` runs, so no input costs more than time proportional to its length, and nothing
 * downstream (schema checks, error messages, PostgreSQL) ever sees a value it cannot handle.
 */

/** Deepest nesting of arrays and objects a body or frame may have (the protocol needs 4). */
export const MAX_JSON_DEPTH = 32;

/**
 * The one kind of request body that is not JSON: a form, which OpenID Connect Back-Channel Logout
 * 1.0 §2.5 prescribes for the provider's logout call. A route opts in by giving its body schema the
 * option `{ mediaType: FORM_MEDIA_TYPE }`; every other body must be `application/json`.
 */
export const FORM_MEDIA_TYPE = "application/x-www-form-urlencoded";

/** Largest HTTP request body, in bytes; larger bodies are refused with 413 before they are read. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** The outcome of reading client JSON: the value, or one short line saying what is wrong (never the value). */
export type JsonReading = { ok: true; value: unknown } | { ok: false; problem: string };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;

const isHighSurrogate = (unit: number) => unit >= 0xd800 && unit <= 0xdbff;
const isLowSurrogate = (unit: number) => unit >= 0xdc00 && unit <= 0xdfff;

/** What the refusal of unstorable text says (the same words for bodies, frames, paths and queries). */
export const UNSTORABLE_TEXT = "text holds U+0000 or an unpaired surrogate, which cannot be stored";

/**
 * Whether `text` can be stored as PostgreSQL `text` (UTF-8 without NUL): no U+0000 and no lone
 * UTF-16 surrogate. The rule `readJson` applies to every string of a body or frame; the edges
 * apply it to path parameters and query values.
 */
export function isStorableText(text: string): boolean {
  // isWellFormed: no lone surrogate (ES2024), which UTF-8 cannot encode.
  return !text.includes("\u0000") && text.isWellFormed();
}

/**
 * The 4 hex digits at `at` as a UTF-16 code unit, or -1 when they are not hex (JSON.parse then
 * refuses the text as malformed).
 */
function hexUnit(text: string, at: number): number {
  if (at + 4 > text.length) return -1;
  let unit = 0;
  for (let i = at; i < at + 4; i++) {
    const c = text.charCodeAt(i);
    const digit =
      c >= 0x30 && c <= 0x39
        ? c - 0x30
        : c >= 0x41 && c <= 0x46
          ? c - 55
          : c >= 0x61 && c <= 0x66
            ? c - 87
            : -1;
    if (digit < 0) return -1;
    unit = unit * 16 + digit;
  }
  return unit;
}

/**
 * Scans `text` once: nesting depth outside strings, and inside strings (keys included) every code
 * unit as it will be after unescaping, so `\u0000` and an escaped lone surrogate are caught as
 * surely as raw ones. Returns the first problem, or undefined.
 */
function scan(text: string, maxDepth: number): string | undefined {
  let depth = 0;
  let inString = false;
  // The previous code unit of the current string was a high surrogate: this one must be low.
  let awaitingLow = false;
  const length = text.length;
  for (let i = 0; i < length; i++) {
    let unit = text.charCodeAt(i);
    if (!inString) {
      if (unit === QUOTE) {
        inString = true;
        awaitingLow = false;
      } else if (unit === OPEN_BRACE || unit === OPEN_BRACKET) {
        if (++depth > maxDepth) return `nests deeper than ${maxDepth} levels`;
      } else if (unit === CLOSE_BRACE || unit === CLOSE_BRACKET) {
        depth--;
      }
      continue;
    }
    if (unit === QUOTE) {
      if (awaitingLow) return UNSTORABLE_TEXT;
      inString = false;
      continue;
    }
    if (unit === BACKSLASH) {
      const escaped = text.charCodeAt(++i);
      if (escaped === 0x75 /* u */) {
        unit = hexUnit(text, i + 1);
        if (unit < 0) return undefined; // malformed escape: JSON.parse says so
        i += 4;
      } else {
        unit = escaped; // \" \\ \/ \b \f \n \r \t: none is NUL or a surrogate
      }
    }
    if (unit === 0) return UNSTORABLE_TEXT;
    if (awaitingLow) {
      if (!isLowSurrogate(unit)) return UNSTORABLE_TEXT;
      awaitingLow = false;
    } else if (isHighSurrogate(unit)) {
      awaitingLow = true;
    } else if (isLowSurrogate(unit)) {
      return UNSTORABLE_TEXT;
    }
  }
  return undefined;
}

/**
 * Parses client JSON in time linear in its length. Refuses, with a one-line problem that never
 * quotes the input: nesting deeper than `maxDepth` (checked before parsing, so a 100,000-deep
 * array never reaches the recursive parser), any string holding text PostgreSQL cannot store
 * (`isStorableText`), and text that is not JSON.
 */
export function readJson(text: string, maxDepth: number = MAX_JSON_DEPTH): JsonReading {
  const problem = scan(text, maxDepth);
  if (problem) return { ok: false, problem };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false, problem: "not valid JSON" };
  }
}
