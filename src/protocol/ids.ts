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
 * A name a person gives and others are shown (group names, device names): 1 to `maxLength`
 * characters with no control characters (C0, DEL, C1), line or paragraph separators (U+2028,
 * U+2029) or bidirectional embedding, override and isolate controls (U+202A–U+202E,
 * U+2066–U+2069). Those make a name rewrite what a terminal or page shows around it (escape
 * sequences, a forged line, text reversed: the "Trojan Source" trick, CVE-2021-42574); clients
 * escape what they show all the same, and the server refuses them so no client has to be right.
 */
export function DisplayName(maxLength: number) {
  return T.String({
    minLength: 1,
    maxLength,
    pattern: "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]+$",
    errorMessage: `must be 1 to ${maxLength} characters without control characters, line breaks or bidirectional controls`,
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
