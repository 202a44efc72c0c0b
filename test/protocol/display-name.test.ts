import { describe, expect, test } from "bun:test";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { GroupModel } from "../../src/groups/model.ts";
import { OidcModel } from "../../src/oidc/model.ts";
import { DISPLAY_NAME_REGEXP } from "../../src/protocol/ids.ts";
import { SessionModel } from "../../src/sessions/model.ts";

/** Every body field that stores a name others are shown, each as a body holding `name`. */
const FIELDS = {
  "POST /v1/groups name": {
    check: TypeCompiler.Compile(GroupModel.create),
    body: (name: string) => ({ name, members: [] }),
  },
  "POST /v1/sessions deviceName": {
    check: TypeCompiler.Compile(SessionModel.login),
    body: (name: string) => ({
      username: "alice",
      password: "password123",
      registrationId: 7,
      deviceName: name,
    }),
  },
  "POST /v1/oidc/sessions deviceName": {
    check: TypeCompiler.Compile(OidcModel.exchange),
    body: (name: string) => ({ code: "c", registrationId: 7, deviceName: name }),
  },
};

/** One of each kind the rule refuses, named by its code point. */
const REFUSED: Record<string, string> = {
  "U+0000 NUL (Cc)": "a\u0000b",
  "U+001B ESC (Cc)": "a\u001b[2Jb",
  "U+009B CSI (Cc)": "a\u009bb",
  "U+00AD SOFT HYPHEN (Cf)": "ad\u00admin",
  "U+061C ARABIC LETTER MARK (Cf)": "a\u061cb",
  "U+180E MONGOLIAN VOWEL SEPARATOR (Cf)": "a\u180eb",
  "U+200B ZERO WIDTH SPACE (Cf)": "ad\u200bmin",
  "U+200C ZERO WIDTH NON-JOINER (Cf)": "a\u200cb",
  "U+200D ZERO WIDTH JOINER between letters (Cf)": "a\u200db",
  "U+200D ZERO WIDTH JOINER after a pictograph, before a letter": "👍\u200da",
  "U+200C ZERO WIDTH NON-JOINER at the end of an Arabic-script word": "می\u200c",
  "U+200C ZERO WIDTH NON-JOINER between Arabic and Latin": "م\u200ca",
  "U+200E LEFT-TO-RIGHT MARK (Cf)": "a\u200eb",
  "U+200F RIGHT-TO-LEFT MARK (Cf)": "a\u200fb",
  "U+2028 LINE SEPARATOR (Zl)": "a\u2028b",
  "U+2029 PARAGRAPH SEPARATOR (Zp)": "a\u2029b",
  "U+202E RIGHT-TO-LEFT OVERRIDE (Cf)": "abc\u202edcba",
  "U+2060 WORD JOINER (Cf)": "a\u2060b",
  "U+2066 LEFT-TO-RIGHT ISOLATE (Cf)": "a\u2066b",
  "U+FEFF BYTE ORDER MARK (Cf)": "\ufeffadmin",
  "U+FFF9 INTERLINEAR ANNOTATION ANCHOR (Cf)": "a\ufff9b",
  "U+1D173 MUSICAL SYMBOL BEGIN BEAM (Cf, astral)": "a\u{1d173}b",
  "U+E0041 TAG LATIN CAPITAL LETTER A outside a flag (Cf)": "admin\u{e0041}",
  "tags after U+1F3F4 without a CANCEL TAG": "🏴\u{e0067}\u{e0062}",
  "U+D800 lone surrogate (Cs)": "a\ud800b",
};

const ALLOWED: Record<string, string> = {
  "letters of any script": "Équipe 東京 – ok",
  "right-to-left letters without controls": "שלום עולם",
  "emoji with a skin tone": "👍🏽 team",
  "emoji ZWJ sequence": "👨‍👩‍👧 family",
  "emoji ZWJ sequence after U+FE0F": "🏳️‍🌈",
  "subdivision flag (tag sequence)": "🏴󠁧󠁢󠁳󠁣󠁴󠁿 scots",
  "Persian with the ZERO WIDTH NON-JOINER its spelling needs": "می\u200cخواهم",
  "Devanagari half form with a ZERO WIDTH JOINER after the virama": "क्\u200dष",
};

describe("DisplayName: one rule for every name others are shown", () => {
  for (const [field, { check, body }] of Object.entries(FIELDS)) {
    test(`${field} refuses control, format (Cf), separator and lone surrogate characters, saying so in words`, () => {
      for (const [what, name] of Object.entries(REFUSED)) {
        expect({ what, ok: check.Check(body(name)) }).toEqual({ what, ok: false });
        const first = [...check.Errors(body(name))][0];
        expect((first?.schema as { errorMessage?: string } | undefined)?.errorMessage).toContain(
          "invisible format characters",
        );
      }
    });

    test(`${field} takes names of any script and emoji`, () => {
      for (const [what, name] of Object.entries(ALLOWED)) {
        expect({ what, ok: check.Check(body(name)) }).toEqual({ what, ok: true });
      }
    });
  }

  test("the rule holds every character of category Cf below U+10000 out, alone and between letters", () => {
    const cf = /^\p{Cf}$/u;
    let seen = 0;
    for (let code = 0; code < 0x10000; code++) {
      const c = String.fromCharCode(code);
      if (!cf.test(c)) continue;
      seen++;
      expect({ code: code.toString(16), alone: DISPLAY_NAME_REGEXP.test(c) }).toEqual({
        code: code.toString(16),
        alone: false,
      });
      expect(DISPLAY_NAME_REGEXP.test(`a${c}b`)).toBe(false);
    }
    expect(seen).toBeGreaterThan(40);
  });
});
