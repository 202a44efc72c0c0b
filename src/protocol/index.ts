/**
 * The wire contract of docs/PROTOCOL.md in one place: error codes, close codes, id and base64
 * schemas, WebSocket frames and their builders, the JSON reader every client input goes through,
 * and the erasure receipt's signed bytes and checks. Imported by the gateway, messaging and the
 * client SDK alike; it imports nothing from the rest of the project.
 */
export * from "./accounts.ts";
export * from "./close-codes.ts";
export * from "./erasure-receipt.ts";
export * from "./errors.ts";
export * from "./frames.ts";
export * from "./ids.ts";
export * from "./json.ts";
