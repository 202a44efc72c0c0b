import { DomainError } from "../errors/index.ts";
import { ERROR_STATUS, type ErrorBody, type ErrorStatus } from "../protocol/errors.ts";

/** An HTTP error reply: status, protocol body and headers (`Retry-After` for `rate_limited`). */
export interface ErrorReply {
  status: ErrorStatus;
  body: ErrorBody;
  headers: Record<string, string>;
}

/** The one mapping from a domain refusal to its HTTP reply (docs/PROTOCOL.md, Errors). */
export function errorReply(error: DomainError): ErrorReply {
  const headers: Record<string, string> = {};
  if (error.retryAfterSeconds !== undefined) headers["retry-after"] = String(error.retryAfterSeconds);
  return {
    status: error.status ?? ERROR_STATUS[error.code],
    body: { error: { code: error.code, message: error.message } },
    headers,
  };
}

export { DomainError };

/**
 * Turns a TypeBox validation failure of a path parameter or query value into one short line: where
 * and what, never the value or the schema. (Bodies never get here: the JSON body gate checks them.)
 * Both listeners use it, so the admin RPC names the parameter it refuses as the public API does.
 */
export function describeValidation(error: unknown): string {
  // The first TypeBox error Elysia already found: its message names the rule, never the value
  // (Elysia's `summary` may end in "but found: <value>", so it is not used).
  const first = (error as { valueError?: { path?: string; message?: string; schema?: unknown } }).valueError;
  if (!first) return "request does not match the schema";
  const where = first.path ? first.path.replace(/^\//, "").replaceAll("/", ".") : "";
  // A schema may say what it wants in words (`errorMessage`, as `firstProblem` reads it) where
  // TypeBox's own message would quote a pattern.
  const custom = (first.schema as { errorMessage?: unknown } | undefined)?.errorMessage;
  const what = typeof custom === "string" ? custom : (first.message ?? "is not valid");
  return where ? `${where}: ${what}` : what;
}

/**
 * The domain refusal for an error Elysia raised before or around a handler (its `onError` code),
 * or undefined when the error is unexpected (the caller logs it and answers `internal`).
 * A TypeBox failure becomes one line naming the parameter (`describeValidation`); the rejected value
 * is never echoed.
 */
export function frameworkRefusal(code: unknown, error: unknown): DomainError | undefined {
  if (error instanceof DomainError) return error;
  if (code === "VALIDATION") return new DomainError("invalid", describeValidation(error));
  // The body gate (json-body.ts) refuses inside Elysia's parse step, which wraps what it throws.
  if (code === "PARSE") {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof DomainError ? cause : new DomainError("invalid", "body is not valid JSON");
  }
  if (code === "NOT_FOUND") return new DomainError("not_found", "no such route");
  if (code === "INVALID_COOKIE_SIGNATURE") return new DomainError("invalid", "bad cookie");
  return undefined;
}
