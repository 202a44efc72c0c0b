import { Type as T } from "@sinclair/typebox";

/** A UUID in either case, as a client may write it. */
const UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const UUID_REGEXP = new RegExp(UUID_PATTERN);

/**
 * A UUID as the protocol writes ids (users, groups, messages, erasures): accepted in either case
 * and decoded to lower case, the one form the server keys anything by, so the same user can never
 * get two actors, presence entries or rate-limit counters. The one id schema of every frame, body
 * and path (Elysia decodes it for routes; frame checks call `Decode`). A pattern rather than
 * `format: "uuid"`, so a check does not depend on a format registered elsewhere.
 */
export const Uuid = T.Transform(T.String({ pattern: UUID_PATTERN }))
  .Decode((id) => id.toLowerCase())
  .Encode((id) => id);

/** A UUID in its canonical (lower-case) form, or undefined when `text` is not a UUID (query values). */
export function canonicalUuid(text: string): string | undefined {
  return UUID_REGEXP.test(text) ? text.toLowerCase() : undefined;
}

/**
 * What a name others are shown may hold: any character but control characters (`Cc`: C0, DEL,
 * C1), format characters (`Cf`: the bidirectional marks U+061C, U+200E, U+200F, embeddings,
 * overrides and isolates U+202A–U+202E and U+2066–U+2069, zero-width space, joiners and word
 * joiner U+200B–U+200D and U+2060, the byte-order mark U+FEFF, the soft hyphen U+00AD, tags
 * U+E0000–U+E007F, …), lone surrogates (`Cs`) and the line and paragraph separators (`Zl`, `Zp`).
 * Those make a name rewrite what a terminal or page shows around it (escape sequences, a forged
 * line, text reversed: the "Trojan Source" trick, CVE-2021-42574) or look like another name
 * (invisible characters; UTS #39 §3.1 lists `Cf` as not allowed in identifiers). Two uses of `Cf`
 * that emoji need are allowed where UTS #51 puts them, and only there: a ZERO WIDTH JOINER between
 * two pictographs (the first optionally with a skin tone or U+FE0F: 👨‍👩‍👧, 🏳️‍🌈), and the tag
 * characters of a subdivision flag, after U+1F3F4 and up to its CANCEL TAG (🏴󠁧󠁢󠁳󠁣󠁴󠁿). And the
 * ZERO WIDTH NON-JOINER and JOINER that spelling needs inside words of the scripts that use them
 * (Persian "می‌خواهم", Devanagari half forms), only between two characters of those scripts
 * (Arabic, Syriac, N'Ko and the Brahmic scripts of India and Sri Lanka): RFC 5892's CONTEXTJ
 * allows them in joining and virama contexts for the same reason, and between Latin letters
 * they would only hide a name's likeness to another.
 * Categories as the JavaScript engine's Unicode tables have them (`\p{…}` with the `u` flag).
 */
export const DISPLAY_NAME_REGEXP =
  /^(?:[^\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]|(?<=[\p{sc=Arab}\p{sc=Syrc}\p{sc=Nkoo}\p{sc=Deva}\p{sc=Beng}\p{sc=Guru}\p{sc=Gujr}\p{sc=Orya}\p{sc=Taml}\p{sc=Telu}\p{sc=Knda}\p{sc=Mlym}\p{sc=Sinh}])[\u200C\u200D](?=[\p{sc=Arab}\p{sc=Syrc}\p{sc=Nkoo}\p{sc=Deva}\p{sc=Beng}\p{sc=Guru}\p{sc=Gujr}\p{sc=Orya}\p{sc=Taml}\p{sc=Telu}\p{sc=Knda}\p{sc=Mlym}\p{sc=Sinh}])|(?<=\p{Extended_Pictographic}(?:\p{Emoji_Modifier}|\uFE0F)?)\u200D(?=\p{Extended_Pictographic})|(?<=\u{1F3F4}[\u{E0020}-\u{E007E}]*)[\u{E0020}-\u{E007E}](?=[\u{E0020}-\u{E007E}]*\u{E007F})|(?<=\u{1F3F4}[\u{E0020}-\u{E007E}]+)\u{E007F})+$/u;

/**
 * The one schema of every name a person gives and others are shown (group names, device names):
 * 1 to `maxLength` UTF-16 code units, each character allowed by `DISPLAY_NAME_REGEXP`. The server
 * refuses the rest (400 `invalid`, the rule said in words) so no client has to be right; clients
 * escape what they show all the same. A TypeBox `RegExp` type, not a `pattern`: TypeBox compiles a
 * `pattern` without the `u` flag, which Unicode categories need.
 */
export function DisplayName(maxLength: number) {
  return T.RegExp(DISPLAY_NAME_REGEXP, {
    minLength: 1,
    maxLength,
    errorMessage: `must be 1 to ${maxLength} characters without control characters, line breaks, bidirectional controls or other invisible format characters`,
  });
}

/** libsignal's `ProtocolAddress` takes device ids 1-127, so an account has at most 127 devices. */
export const MAX_DEVICE_ID = 127;

/** A device id within an account. */
export const DeviceId = T.Integer({ minimum: 1, maximum: MAX_DEVICE_ID });

/** libsignal registration ids are 14-bit and never 0 (`KeyHelper.generateRegistrationId`: 1-16380). */
export const RegistrationId = T.Integer({ minimum: 1, maximum: 16380 });

/**
 * Standard base64 with padding (RFC 4648 §4), as every binary value on the wire is written;
 * `maxLength` in characters.
 */
export function Base64(options: { minLength?: number; maxLength: number }) {
  return T.String({
    pattern: "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
    minLength: options.minLength ?? 4,
    maxLength: options.maxLength,
  });
}
