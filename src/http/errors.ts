/** The protocol's stable error codes (protocol.md, Errors). */
export type ErrorCode =
  | "invalid"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "too_large"
  | "bad_signature"
  | "rate_limited"
  | "internal"
  | "unavailable";

const STATUS: Record<ErrorCode, number> = {
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
};

/** An error whose code and message may be shown to the client as they are. */
export class ApiError extends Error {
  override name = "ApiError";
  readonly status: number;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(message, options);
    this.status = STATUS[code];
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  readonly retryAfterSeconds?: number;

  /** The protocol's error body. */
  toBody() {
    return { error: { code: this.code, message: this.message } };
  }
}
