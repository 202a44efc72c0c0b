/** What a log line keeps of an error: names and codes, never a value. */
export interface SerializedError {
  /** The error's class (constructor name), e.g. `DrizzleQueryError`, `PostgresError`, `DomainError`. */
  type: string;
  /** Its code when it has one: a PostgreSQL SQLSTATE (`23505`), a system code (`ECONNREFUSED`), a protocol code. */
  code?: string;
  /** The database constraint it broke, by name (PostgreSQL `constraint_name`, PGlite `constraint`). */
  constraint?: string;
  /** The table and column it names, when the driver reports them (names of the schema, not values). */
  table?: string;
  column?: string;
  /** Where it was thrown: the stack's frames only, without the first line (which repeats the message). */
  stack?: string;
  /** The error it wraps (drizzle's `DrizzleQueryError` wraps the driver's), kept the same way. */
  cause?: SerializedError;
}

/** How deep `cause` chains are followed. */
const MAX_CAUSES = 4;

/** What `serializeError` produced: given to it again (pino's serializers run after our formatter), it is kept. */
const produced = new WeakSet<object>();

/** A name reported by a driver: strings only (Bun sets numeric `line`/`column` on every error). */
function name(value: unknown): string | undefined {
  return typeof value === "string" && value.length > 0 ? value.slice(0, 128) : undefined;
}

function text(value: unknown): string | undefined {
  if (typeof value === "string" && value.length > 0) return value.slice(0, 128);
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  return undefined;
}

/**
 * The stack's `at …` frames: every line before the first frame belongs to the message. The
 * message is cut off first where the stack repeats it (`Name: message` heads a stack): a value in
 * it (a failed query's params hold client text) may itself contain a line that looks like a frame.
 */
function frames(stack: unknown, message: unknown): string | undefined {
  if (typeof stack !== "string") return undefined;
  let rest = stack;
  if (typeof message === "string" && message.length > 0) {
    const at = stack.indexOf(message);
    if (at >= 0) rest = stack.slice(at + message.length);
  }
  const lines = rest.split("\n");
  const first = lines.findIndex((line) => /^\s+at\s/.test(line));
  if (first < 0) return undefined;
  return lines.slice(first).join("\n");
}

/**
 * The one error serializer of the process: every logger (`createLogger`, which the actor system
 * is given too) writes an error through it, under `err` or any other field.
 *
 * It keeps the class, the code, the constraint, table and column names, the stack frames and the
 * cause chain, and drops everything else: the message (drizzle's `DrizzleQueryError` message is
 * `Failed query: <SQL>\nparams: <values>`, which for a failed insert holds ciphertexts, password
 * hashes or usernames), `params`, `query`, the driver's `detail` (PostgreSQL writes `Key
 * (username)=(alice) already exists`), `where`, `hint`, and any field an error class adds.
 * Non-errors become `{type: "NonError"}` (or the `typeof`), never their value.
 */
export function serializeError(error: unknown, depth = 0): SerializedError {
  if (error === null || typeof error !== "object") {
    return { type: error === undefined || error === null ? "NonError" : `NonError(${typeof error})` };
  }
  if (produced.has(error)) return error as SerializedError;
  const e = error as Record<string, unknown>;
  const type =
    (typeof (error as object).constructor?.name === "string" && (error as object).constructor.name) ||
    text(e.name) ||
    "Object";
  const out: SerializedError = { type };
  const code = text(e.code) ?? text(e.errno);
  if (code) out.code = code;
  const constraint = name(e.constraint_name) ?? name(e.constraint);
  if (constraint) out.constraint = constraint;
  const table = name(e.table_name) ?? name(e.table);
  if (table) out.table = table;
  const column = name(e.column_name) ?? name(e.column);
  if (column) out.column = column;
  const stack = frames(e.stack, e.message);
  if (stack) out.stack = stack;
  if (e.cause !== undefined && depth < MAX_CAUSES) out.cause = serializeError(e.cause, depth + 1);
  produced.add(out);
  return out;
}
