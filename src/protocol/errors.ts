/**
 * The protocol's stable error codes and the HTTP status each one travels with (docs/PROTOCOL.md,
 * Errors). `rate_limited` replies carry `Retry-After` (seconds).
 */
export const ERROR_STATUS = {
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  bad_signature: 422,
  rate_limited: 429,
  internal: 500,
  unavailable: 503,
} as const;

/** One of the protocol's error codes. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/**
 * The one status a code travels with besides its own: `invalid` is answered 415 (Unsupported Media
 * Type) when a body is not `application/json`.
 */
export const UNSUPPORTED_MEDIA_TYPE = 415;

/** Every HTTP status an error reply may have. */
export type ErrorStatus = (typeof ERROR_STATUS)[ErrorCode] | typeof UNSUPPORTED_MEDIA_TYPE;

/** The body of every HTTP error reply: `{"error": {"code", "message"}}`. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string };
}
