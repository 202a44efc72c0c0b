import { describe, expect, test } from "bun:test";
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  checkReceipt,
  type ReceiptPayload,
  receiptSigningInput,
  type SignedReceipt,
  verifyReceipt,
} from "../../src/protocol/erasure-receipt.ts";

const ROOT = resolve(import.meta.dir, "../..");
const GDPR_DOC = readFileSync(join(ROOT, "docs/GDPR.md"), "utf8");
/** A test key, committed on purpose: it signs docs/GDPR.md's test vector and nothing else. */
const TEST_KEY = createPrivateKey(readFileSync(join(import.meta.dir, "fixtures/receipt-test-key.pem")));

/** docs/GDPR.md's test vector. */
const VECTOR = {
  receipt: {
    payload: {
      erasureId: "2b0e5d1c-7a4f-4e8b-9c3d-1f2a3b4c5d6e",
      subject: "6f1d0c3b9a2e4f5d8c7b6a5e4d3c2b1a",
      requestedAt: "2026-01-15T09:30:00.000Z",
      completedAt: "2026-01-15T09:30:02.500Z",
      stores: {
        postgres: {
          removed: 9,
          what: "account (1), devices (2), public keys (4), refresh tokens (1), group memberships and roles (1), emptied groups (0)",
        },
        history: { removed: 3, what: "envelopes sent by or to the user in the postgres history" },
      },
    },
    algorithm: "Ed25519",
    signature: "FwS3U4WKWX2B1Oe0OyQXtjkppTeGZ/BdeVQvcxC38avhhsHij/yohD/woQA6WFSyRTaVL+x23AtxBmuzj8SLDA==",
    publicKey: "MCowBQYDK2VwAyEAtVtMXoUmdgexWm9C2D/p2FKxNBonEgNkvUkkFKvYPmA=",
  } satisfies SignedReceipt,
  canonical:
    '{"completedAt":"2026-01-15T09:30:02.500Z","erasureId":"2b0e5d1c-7a4f-4e8b-9c3d-1f2a3b4c5d6e","requestedAt":"2026-01-15T09:30:00.000Z","stores":{"history":{"removed":3,"what":"envelopes sent by or to the user in the postgres history"},"postgres":{"removed":9,"what":"account (1), devices (2), public keys (4), refresh tokens (1), group memberships and roles (1), emptied groups (0)"}},"subject":"6f1d0c3b9a2e4f5d8c7b6a5e4d3c2b1a"}',
  sha256: "403bb532b96b8d4c86e68c248251ebe5ce575be14cb036011b1f3cbb439671fa",
};

const tampered = (payload: Partial<ReceiptPayload>): SignedReceipt => ({
  ...VECTOR.receipt,
  payload: { ...VECTOR.receipt.payload, ...payload },
});

/** The vector's payload signed with a key of someone else's, that key embedded: a forgery. */
function forged(): SignedReceipt {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return {
    ...VECTOR.receipt,
    signature: sign(null, receiptSigningInput(VECTOR.receipt.payload), privateKey).toString("base64"),
    publicKey: publicKey.export({ format: "der", type: "spki" }).toString("base64"),
  };
}

describe("erasure receipt format (RFC 8785 + Ed25519)", () => {
  test("the vector's payload has the documented canonical bytes and SHA-256", () => {
    const bytes = receiptSigningInput(VECTOR.receipt.payload);
    expect(bytes.toString("utf8")).toBe(VECTOR.canonical);
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(VECTOR.sha256);
    // Key order in the object does not matter: the bytes are canonical.
    const { stores, subject, ...rest } = VECTOR.receipt.payload;
    expect(receiptSigningInput({ subject, stores, ...rest }).toString("utf8")).toBe(VECTOR.canonical);
  });

  test("the test key signs those bytes into exactly the documented signature (Ed25519 is deterministic)", () => {
    const signature = sign(null, Buffer.from(VECTOR.canonical, "utf8"), TEST_KEY).toString("base64");
    expect(signature).toBe(VECTOR.receipt.signature);
    expect(createPublicKey(TEST_KEY).export({ format: "der", type: "spki" }).toString("base64")).toBe(
      VECTOR.receipt.publicKey,
    );
  });

  test("docs/GDPR.md shows the same receipt, bytes, hash and signature", () => {
    for (const fact of [
      VECTOR.canonical,
      VECTOR.sha256,
      VECTOR.receipt.signature,
      VECTOR.receipt.publicKey,
      VECTOR.receipt.payload.erasureId,
    ]) {
      expect(GDPR_DOC).toContain(fact);
    }
  });

  test("the doc's Python line (the standard library, no JCS package) gives the same bytes", () => {
    const line = GDPR_DOC.split("\n").find((l) => l.startsWith("python3 -c"));
    expect(line).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), "clearbox-receipt-"));
    try {
      writeFileSync(join(dir, "receipt.json"), JSON.stringify(VECTOR.receipt, null, 2));
      const run = Bun.spawnSync(["bash", "-euo", "pipefail", "-c", line as string], { cwd: dir });
      expect(run.exitCode).toBe(0);
      expect(readFileSync(join(dir, "payload.jcs"), "utf8")).toBe(VECTOR.canonical);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the canonicalize package's own CLI gives the same bytes", () => {
    const run = Bun.spawnSync([join(ROOT, "node_modules/.bin/canonicalize")], {
      stdin: Buffer.from(JSON.stringify(VECTOR.receipt.payload, null, 2)),
    });
    expect(run.exitCode).toBe(0);
    expect(run.stdout.toString()).toBe(VECTOR.canonical);
  });

  test("verifyReceipt: the vector verifies; a changed payload or signature does not", () => {
    expect(verifyReceipt(VECTOR.receipt)).toBe(true);
    expect(verifyReceipt(VECTOR.receipt, VECTOR.receipt.publicKey)).toBe(true);
    expect(verifyReceipt(tampered({ completedAt: "2026-01-15T09:30:02.501Z" }))).toBe(false);
    expect(
      verifyReceipt(
        tampered({ stores: { ...VECTOR.receipt.payload.stores, history: { removed: 2, what: "x" } } }),
      ),
    ).toBe(false);
    const flipped = Buffer.from(VECTOR.receipt.signature, "base64");
    flipped[0] ^= 1;
    expect(verifyReceipt({ ...VECTOR.receipt, signature: flipped.toString("base64") })).toBe(false);
    expect(verifyReceipt(VECTOR.receipt, "not a key")).toBe(false);
  });

  test("checkReceipt: valid against the published key", () => {
    expect(checkReceipt(VECTOR.receipt, VECTOR.receipt.publicKey)).toEqual({
      valid: true,
      erasureId: VECTOR.receipt.payload.erasureId,
    });
  });

  test("checkReceipt: a tampered payload fails the signature check", () => {
    const check = checkReceipt(tampered({ subject: "someone else" }), VECTOR.receipt.publicKey);
    expect(check).toMatchObject({ valid: false, failed: "signature" });
  });

  test("checkReceipt: a receipt re-signed with another key fails the key check, though it verifies with its own key", () => {
    const forgery = forged();
    expect(verifyReceipt(forgery)).toBe(true); // intact, but not the server's
    expect(checkReceipt(forgery, VECTOR.receipt.publicKey)).toMatchObject({ valid: false, failed: "key" });
    // The original receipt checked against a server that publishes another key: also the key check.
    expect(checkReceipt(VECTOR.receipt, forgery.publicKey)).toMatchObject({ valid: false, failed: "key" });
  });

  test("checkReceipt: what is not a receipt fails the format check", () => {
    const published = VECTOR.receipt.publicKey;
    for (const input of [
      null,
      "a string",
      [],
      {},
      { ...VECTOR.receipt, payload: "text" },
      { ...VECTOR.receipt, algorithm: "RSA" },
      { ...VECTOR.receipt, signature: 42 },
      { payload: VECTOR.receipt.payload, algorithm: "Ed25519", signature: VECTOR.receipt.signature },
    ]) {
      expect(checkReceipt(input, published)).toMatchObject({ valid: false, failed: "format" });
    }
  });

  test("checkReceipt: a published key that is not an Ed25519 key is the caller's error, not an invalid receipt", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
      .publicKey.export({ format: "der", type: "spki" })
      .toString("base64");
    expect(() => checkReceipt(VECTOR.receipt, rsa)).toThrow(TypeError);
    expect(() => checkReceipt(VECTOR.receipt, "")).toThrow(TypeError);
  });
});
