import type { TSchema } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";
import { Elysia } from "elysia";
import { DomainError } from "../errors/index.ts";
import {
  FORM_MEDIA_TYPE,
  firstProblem,
  isStorableText,
  MAX_BODY_BYTES,
  MAX_JSON_DEPTH,
  readJson,
  UNSTORABLE_TEXT,
  UNSUPPORTED_MEDIA_TYPE,
} from "../protocol/index.ts";

/** What the gate needs of an Elysia route (`app.routes`). */
interface RouteShape {
  method: string;
  path: string;
  hooks?: { body?: unknown };
}

/** `application/json`, optionally with `charset=utf-8` (RFC 8259 §8.1 allows no other encoding). */
const JSON_MEDIA_TYPE = /^application\/json\s*(?:;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;
/** A form, optionally with `charset=utf-8`, for the routes whose schema asks for one. */
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(?:;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;

/** How a route's body is read and checked. */
interface BodyRule {
  check: TypeCheck<TSchema>;
  /** The schema asked for a form (`mediaType: FORM_MEDIA_TYPE`) instead of JSON. */
  form: boolean;
}

/** A form's fields as an object of strings (the last of a repeated name wins), every key and value storable. */
function readForm(
  text: string,
): { ok: true; value: Record<string, string> } | { ok: false; problem: string } {
  const value: Record<string, string> = {};
  for (const [key, field] of new URLSearchParams(text)) {
    if (!isStorableText(key) || !isStorableText(field)) return { ok: false, problem: UNSTORABLE_TEXT };
    value[key] = field;
  }
  return { ok: true, value };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The JSON body gate of a listener (docs/PROTOCOL.md, Errors): every request to a route that takes a
 * body is refused early and cheaply unless it is `application/json` (else 415 `invalid`), at most
 * `MAX_BODY_BYTES` (413), UTF-8, nested at most `MAX_JSON_DEPTH` deep, holds only storable text
 * (400 `invalid` naming the limit or rule) and matches the route's schema (400 `invalid` naming the
 * field). All of it runs in Elysia's parse step, before Elysia's own validation, whose error
 * serialises the rejected value with indentation (quadratic in the nesting): with the schema
 * already checked here, that error is never built for a body. Bodies sent to routes that take none
 * are not read. A route whose schema has `mediaType: FORM_MEDIA_TYPE` (OIDC back-channel logout)
 * takes a form instead, held to the same size and text rules. Path parameters and query values get
 * the same text rule.
 *
 * Use `plugin` first on the app, then call `index(app.routes)` once every route is registered.
 */
export function jsonBodyGate(limits: { maxBytes?: number; maxDepth?: number } = {}) {
  const maxBytes = limits.maxBytes ?? MAX_BODY_BYTES;
  const maxDepth = limits.maxDepth ?? MAX_JSON_DEPTH;
  /** `METHOD /route/:pattern` → how its body is read and checked. */
  const rules = new Map<string, BodyRule>();

  async function read(request: Request, { check, form }: BodyRule): Promise<unknown> {
    const tooLarge = () => new DomainError("too_large", `bodies are at most ${maxBytes} bytes`);
    const required = `a ${form ? "form" : "JSON"} body is required`;
    const declared = Number(request.headers.get("content-length") ?? Number.NaN);
    if (declared > maxBytes) throw tooLarge();
    // The media type first, so a form or multipart body is refused without being read.
    if (!(form ? FORM_TYPE : JSON_MEDIA_TYPE).test(request.headers.get("content-type") ?? "")) {
      if (declared === 0) throw new DomainError("invalid", required);
      const wanted = form ? FORM_MEDIA_TYPE : "application/json";
      throw new DomainError("invalid", `bodies must be ${wanted}`, { status: UNSUPPORTED_MEDIA_TYPE });
    }
    const bytes = new Uint8Array(await request.arrayBuffer());
    if (bytes.byteLength > maxBytes) throw tooLarge();
    if (bytes.byteLength === 0) throw new DomainError("invalid", required);
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      throw new DomainError("invalid", "body is not valid UTF-8");
    }
    const reading = form ? readForm(text) : readJson(text, maxDepth);
    if (!reading.ok) {
      throw new DomainError(
        "invalid",
        reading.problem === "not valid JSON" ? "body is not valid JSON" : `body ${reading.problem}`,
      );
    }
    if (!check.Check(reading.value)) throw new DomainError("invalid", firstProblem(check, reading.value));
    return reading.value;
  }

  const plugin = new Elysia()
    .onParse({ as: "global" }, ({ request, route }) => {
      const rule = rules.get(`${request.method} ${route}`);
      // A route without a body schema takes no body: returning a value keeps Elysia's own parsers
      // (forms, multipart) from reading it.
      if (!rule) return null;
      return read(request, rule);
    })
    .onTransform({ as: "global" }, ({ params, query }) => {
      for (const [name, value] of [...Object.entries(params ?? {}), ...Object.entries(query ?? {})]) {
        if (typeof value === "string" && !isStorableText(value)) {
          throw new DomainError("invalid", `${name}: ${UNSTORABLE_TEXT}`);
        }
      }
    });

  return {
    plugin,
    /**
     * Compiles the body schema of each route. Throws at start-up for a body given by model name:
     * the gate could not check it, and Elysia's validation error would be back on that route.
     */
    index(routes: readonly RouteShape[]): void {
      for (const route of routes) {
        const body = route.hooks?.body;
        if (body === undefined) continue;
        if (typeof body !== "object" || body === null) {
          throw new Error(`${route.method} ${route.path}: give the body schema itself, not a model name`);
        }
        const schema = body as TSchema;
        rules.set(`${route.method} ${route.path}`, {
          check: TypeCompiler.Compile(schema),
          form: schema.mediaType === FORM_MEDIA_TYPE,
        });
      }
    },
  };
}
