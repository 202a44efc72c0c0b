import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { eq } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { serverSecrets } from "../db/schema.ts";
import { type ReceiptPayload, receiptSigningInput, type SignedReceipt } from "../protocol/erasure-receipt.ts";

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

  /** Signs the RFC 8785 bytes of the payload (see `receiptSigningInput`). */
  sign(payload: ReceiptPayload): SignedReceipt {
    const signature = sign(null, receiptSigningInput(payload), this.privateKey).toString("base64");
    return { payload, algorithm: "Ed25519", signature, publicKey: this.publicKeyDer };
  }
}
