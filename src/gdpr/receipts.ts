import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import { eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { serverSecrets } from "../db/schema.ts";
import { canonicalJson } from "./canonical-json.ts";

/** What an erasure receipt attests (GDPR Art. 17): which subject, when, and what each store removed. */
export interface ReceiptPayload {
  erasureId: string;
  /** The subject's audit pseudonym: the receipt names nobody. */
  subject: string;
  requestedAt: string;
  completedAt: string;
  stores: Record<string, { removed: number; what: string }>;
}

/** A receipt: the payload, an Ed25519 signature over its canonical JSON, and the key to check it with. */
export interface SignedReceipt {
  payload: ReceiptPayload;
  algorithm: "Ed25519";
  /** Base64 of the signature over canonicalJson(payload). */
  signature: string;
  /** The server's public key, SPKI DER in base64 (also at GET /v1/erasures/signing-key). */
  publicKey: string;
}

const SECRET_NAME = "erasure-receipt-ed25519";

/** Signs erasure receipts with one Ed25519 key shared by every node (kept in server_secrets). */
export class ReceiptSigner {
  private constructor(
    private readonly privateKey: KeyObject,
    readonly publicKeyDer: string,
  ) {}

  /** Loads the key, generating it on the very first start (the first node to insert wins). */
  static async load(db: Db): Promise<ReceiptSigner> {
    const { privateKey } = generateKeyPairSync("ed25519");
    const candidate = privateKey.export({ format: "der", type: "pkcs8" });
    await db
      .insert(serverSecrets)
      .values({ name: SECRET_NAME, value: new Uint8Array(candidate) })
      .onConflictDoNothing();
    const [row] = await db.select().from(serverSecrets).where(eq(serverSecrets.name, SECRET_NAME));
    const key = createPrivateKey({ key: Buffer.from(row.value), format: "der", type: "pkcs8" });
    const publicKey = createPublicKey(key).export({ format: "der", type: "spki" }).toString("base64");
    return new ReceiptSigner(key, publicKey);
  }

  sign(payload: ReceiptPayload): SignedReceipt {
    const signature = sign(null, Buffer.from(canonicalJson(payload)), this.privateKey).toString("base64");
    return { payload, algorithm: "Ed25519", signature, publicKey: this.publicKeyDer };
  }
}

/** Checks a receipt against a public key (SPKI DER, base64) — what anyone holding a receipt can do. */
export function verifyReceipt(receipt: SignedReceipt, publicKeyDer: string = receipt.publicKey): boolean {
  try {
    const key = createPublicKey({ key: Buffer.from(publicKeyDer, "base64"), format: "der", type: "spki" });
    return verify(
      null,
      Buffer.from(canonicalJson(receipt.payload)),
      key,
      Buffer.from(receipt.signature, "base64"),
    );
  } catch {
    return false;
  }
}
