/**
 * The erasure receipt (docs/GDPR.md) as anyone holding one sees it: its shape, the bytes its
 * signature covers, and the checks. Part of the wire contract: the server's signer and the CLI's
 * `verify-receipt` share it, and like the rest of src/protocol/ it imports nothing of the project.
 */
import { createPublicKey, type KeyObject, verify } from "node:crypto";
import canonicalize from "canonicalize";

/** What an erasure receipt attests (GDPR Art. 17): which subject, when, and what each store removed. */
export interface ReceiptPayload {
  erasureId: string;
  /**
   * An identifier drawn at random for this erasure (32 hex digits) that appears nowhere else: not
   * the audit pseudonym, which would link the receipt to the person's remaining audit entries. The
   * receipt names nobody.
   */
  subject: string;
  /** ISO-8601 UTC. */
  requestedAt: string;
  /** ISO-8601 UTC. */
  completedAt: string;
  stores: Record<string, { removed: number; what: string }>;
}

/** A receipt: the payload, an Ed25519 signature over its RFC 8785 form, and the key to check it with. */
export interface SignedReceipt {
  payload: ReceiptPayload;
  algorithm: "Ed25519";
  /** Base64 of the 64-byte Ed25519 signature over `receiptSigningInput(payload)`. */
  signature: string;
  /** The server's public key, SPKI DER in base64 (also at GET /v1/erasures/signing-key). */
  publicKey: string;
}

/**
 * The bytes a receipt's signature covers: the payload serialised by RFC 8785 (JSON
 * Canonicalization Scheme: keys sorted by UTF-16 code units, no whitespace, ECMAScript number
 * and string forms), in UTF-8. Any JCS implementation produces the same bytes.
 * Throws a TypeError on what JCS refuses (NaN, Infinity, lone surrogates).
 */
export function receiptSigningInput(payload: ReceiptPayload): Buffer {
  return Buffer.from(canonicalize(payload) as string, "utf8"); // an object always serialises
}

/** An Ed25519 public key from SPKI DER in base64; undefined when it is anything else. */
function ed25519Key(spkiDerBase64: string): KeyObject | undefined {
  try {
    const key = createPublicKey({ key: Buffer.from(spkiDerBase64, "base64"), format: "der", type: "spki" });
    return key.asymmetricKeyType === "ed25519" ? key : undefined;
  } catch {
    return undefined;
  }
}

function signatureVerifies(receipt: SignedReceipt, key: KeyObject): boolean {
  try {
    return verify(null, receiptSigningInput(receipt.payload), key, Buffer.from(receipt.signature, "base64"));
  } catch {
    return false;
  }
}

/**
 * Whether the receipt's signature verifies with `publicKeyDer` (SPKI DER, base64; default: the key
 * inside the receipt, which only shows the receipt is intact, not who signed it: see `checkReceipt`).
 */
export function verifyReceipt(receipt: SignedReceipt, publicKeyDer: string = receipt.publicKey): boolean {
  const key = ed25519Key(publicKeyDer);
  return key !== undefined && signatureVerifies(receipt, key);
}

/** The outcome of `checkReceipt`: valid, or the first check that failed and why. */
export type ReceiptCheck =
  | { valid: true; erasureId: string }
  | { valid: false; failed: "format" | "key" | "signature"; reason: string };

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Checks a receipt from an untrusted source (a parsed JSON file) against the key its server
 * publishes at GET /v1/erasures/signing-key, in order:
 * 1. `format`: a receipt's fields are there (`payload` object, `algorithm` "Ed25519", `signature`
 *    and `publicKey` strings);
 * 2. `key`: the public key inside the receipt is the published one (the same SPKI DER bytes);
 * 3. `signature`: the Ed25519 signature verifies, with the published key, over the RFC 8785
 *    bytes of the payload.
 * Throws a TypeError when `publishedKeyDer` itself is not an Ed25519 key (SPKI DER, base64).
 */
export function checkReceipt(receipt: unknown, publishedKeyDer: string): ReceiptCheck {
  const published = ed25519Key(publishedKeyDer);
  if (!published) throw new TypeError("the published key is not an Ed25519 public key (SPKI DER, base64)");
  if (!isObject(receipt) || !isObject(receipt.payload)) {
    return { valid: false, failed: "format", reason: "not a receipt: no payload object" };
  }
  if (receipt.algorithm !== "Ed25519") {
    return { valid: false, failed: "format", reason: "not a receipt: algorithm is not Ed25519" };
  }
  if (typeof receipt.signature !== "string" || typeof receipt.publicKey !== "string") {
    return { valid: false, failed: "format", reason: "not a receipt: signature or publicKey missing" };
  }
  const signed = receipt as unknown as SignedReceipt;
  if (!ed25519Key(signed.publicKey)?.equals(published)) {
    return {
      valid: false,
      failed: "key",
      reason: "the public key in the receipt is not the key the server publishes",
    };
  }
  if (!signatureVerifies(signed, published)) {
    return {
      valid: false,
      failed: "signature",
      reason: "the signature does not verify over the RFC 8785 bytes of the payload",
    };
  }
  return { valid: true, erasureId: String(signed.payload.erasureId) };
}
