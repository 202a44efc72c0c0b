import type { ErrorCode, ErrorStatus } from "../protocol/errors.ts";

/**
 * A refusal a client may be told as it is: a protocol error code (docs/PROTOCOL.md) and a short
 * message that holds no secret, SQL or stack. Features throw it; each edge maps it once (HTTP
 * status and body in `src/http`, the admin listener likewise), as drizzle maps driver errors at the
 * store boundary.
 */
export class DomainError extends Error {
  override name = "DomainError";
  /** For `rate_limited`: seconds until a retry may succeed (HTTP `Retry-After`). */
  readonly retryAfterSeconds?: number;
  /** The HTTP status when it is not the code's own (only `invalid` → 415, docs/PROTOCOL.md). */
  readonly status?: ErrorStatus;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; retryAfterSeconds?: number; status?: ErrorStatus },
  ) {
    super(message, options);
    this.retryAfterSeconds = options?.retryAfterSeconds;
    this.status = options?.status;
  }
}
