import { createHash } from "node:crypto";
import { KEMPublicKey, PublicKey } from "@signalapp/libsignal-client";
import { and, asc, count, eq, inArray, sql } from "drizzle-orm";
import type { AnyPgColumn } from "drizzle-orm/pg-core";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import type { Db, Tx } from "../db/index.ts";
import {
  accounts,
  devices,
  handedOutPreKeys,
  identityKeys,
  kyberLastResortKeys,
  oneTimeKyberPreKeys,
  oneTimePreKeys,
  signedPreKeys,
} from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import { type RateLimiter, type RateLimitRule, spendOrRefuse } from "../ratelimit/index.ts";
import type { Principal } from "../sessions/service.ts";
import type { KeysModel } from "./model.ts";

/** Serialized sizes, type byte included: Curve25519 (0x05) and Kyber1024 (0x08) public keys, XEd25519 signatures. */
export const EC_PUBLIC_KEY_BYTES = 33;
export const KYBER_PUBLIC_KEY_BYTES = 1569;
export const SIGNATURE_BYTES = 64;
const EC_KEY_TYPE = 0x05;
const KYBER_KEY_TYPE = 0x08;

const TEN_MINUTES = 10 * 60_000;

/**
 * Days a handed-out one-time key's record (`handed_out_pre_keys`: its id and SHA-256) is kept after
 * the fetch that took it; the retention pass removes older ones. The record exists for one case: an
 * upload sent again because its answer was lost (a client's retry, or a proxy's: PUT is idempotent
 * to HTTP) after fetches took some of its keys, which would otherwise store them again. Such a retry
 * comes seconds or minutes after the first attempt (the SDK retries only once, right after a token
 * refresh); 30 days is far past any. Before, the records grew with every fetch until the device went.
 */
export const HANDED_OUT_PRE_KEY_DAYS = 30;

/**
 * Bundle fetch budgets. A real client fetches a given user's bundle when it first talks to them or
 * sees a new device of theirs: a handful of times a day. 20 per 10 minutes per requesting device and
 * target (Signal-Server allows 6) leaves room for retries; draining someone's one-time keys or walking
 * the directory hits one of the two limits within seconds. The account's devices together get four
 * devices' worth of each: a device costs only a login and an account may have 127, so budgets per
 * device alone let one account take 127 × 20 of a user's one-time keys every 10 minutes (as the user
 * lookups' `USER_LOOKUP_ACCOUNT_LIMIT`).
 */
export const KEY_FETCH_LIMITS = {
  perTarget: { name: "keys.target", limit: 20, windowMs: TEN_MINUTES },
  perRequester: { name: "keys.requester", limit: 600, windowMs: TEN_MINUTES },
  perAccountTarget: { name: "keys.target.account", limit: 4 * 20, windowMs: TEN_MINUTES },
  perAccount: { name: "keys.requester.account", limit: 4 * 600, windowMs: TEN_MINUTES },
} satisfies Record<string, RateLimitRule>;

interface SignedKey {
  keyId: number;
  publicKey: Uint8Array;
  signature: Uint8Array;
}

/** An upload after decoding and every check: what gets stored. */
interface CheckedUpload {
  identityKey: Uint8Array;
  signedPreKey: SignedKey;
  kyberPreKey: SignedKey;
  preKeys?: { keyId: number; publicKey: Uint8Array }[];
  kyberPreKeys?: SignedKey[];
}

const toBase64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");
const sha256 = (bytes: Uint8Array) => new Uint8Array(createHash("sha256").update(bytes).digest());

function decode(value: string, field: string, bytes: number, typeByte?: number): Uint8Array {
  const decoded = new Uint8Array(Buffer.from(value, "base64"));
  // Buffer ignores junk; re-encoding tells a canonical base64 string from one it silently repaired.
  if (toBase64(decoded) !== value) throw new DomainError("invalid", `${field}: not canonical base64`);
  if (decoded.length !== bytes) throw new DomainError("invalid", `${field}: must be ${bytes} bytes`);
  if (typeByte !== undefined && decoded[0] !== typeByte) {
    throw new DomainError("invalid", `${field}: wrong key type byte`);
  }
  return decoded;
}

function uniqueIds(keys: { keyId: number }[] | undefined, field: string): void {
  if (keys && new Set(keys.map((k) => k.keyId)).size !== keys.length) {
    throw new DomainError("invalid", `${field}: key ids must be distinct`);
  }
}

/** Parses with libsignal so only keys a client can actually use are stored. */
function parseEc(bytes: Uint8Array, field: string): PublicKey {
  try {
    return PublicKey.deserialize(bytes as Uint8Array<ArrayBuffer>);
  } catch {
    throw new DomainError("invalid", `${field}: not a valid EC public key`);
  }
}

function checkKyber(bytes: Uint8Array, field: string): void {
  try {
    KEMPublicKey.deserialize(bytes as Uint8Array<ArrayBuffer>);
  } catch {
    throw new DomainError("invalid", `${field}: not a valid Kyber public key`);
  }
}

function verify(identity: PublicKey, key: SignedKey, field: string): void {
  if (!identity.verify(key.publicKey as Uint8Array<ArrayBuffer>, key.signature as Uint8Array<ArrayBuffer>)) {
    throw new DomainError("bad_signature", `${field}: signature does not verify against identityKey`);
  }
}

/** Decodes, size-checks and signature-checks an upload; throws before anything is stored. */
export function checkUpload(body: KeysModel.Upload): CheckedUpload {
  uniqueIds(body.preKeys, "preKeys");
  uniqueIds(body.kyberPreKeys, "kyberPreKeys");
  const ecSigned = (k: KeysModel.Upload["signedPreKey"], field: string): SignedKey => ({
    keyId: k.keyId,
    publicKey: decode(k.publicKey, `${field}.publicKey`, EC_PUBLIC_KEY_BYTES, EC_KEY_TYPE),
    signature: decode(k.signature, `${field}.signature`, SIGNATURE_BYTES),
  });
  const kyberSigned = (k: KeysModel.Upload["kyberPreKey"], field: string): SignedKey => ({
    keyId: k.keyId,
    publicKey: decode(k.publicKey, `${field}.publicKey`, KYBER_PUBLIC_KEY_BYTES, KYBER_KEY_TYPE),
    signature: decode(k.signature, `${field}.signature`, SIGNATURE_BYTES),
  });
  const upload: CheckedUpload = {
    identityKey: decode(body.identityKey, "identityKey", EC_PUBLIC_KEY_BYTES, EC_KEY_TYPE),
    signedPreKey: ecSigned(body.signedPreKey, "signedPreKey"),
    kyberPreKey: kyberSigned(body.kyberPreKey, "kyberPreKey"),
    preKeys: body.preKeys?.map((k, i) => ({
      keyId: k.keyId,
      publicKey: decode(k.publicKey, `preKeys.${i}.publicKey`, EC_PUBLIC_KEY_BYTES, EC_KEY_TYPE),
    })),
    kyberPreKeys: body.kyberPreKeys?.map((k, i) => kyberSigned(k, `kyberPreKeys.${i}`)),
  };
  // Everything is well-formed; now check it is real key material, then the signatures.
  const identity = parseEc(upload.identityKey, "identityKey");
  parseEc(upload.signedPreKey.publicKey, "signedPreKey.publicKey");
  for (const [i, k] of (upload.preKeys ?? []).entries()) parseEc(k.publicKey, `preKeys.${i}.publicKey`);
  checkKyber(upload.kyberPreKey.publicKey, "kyberPreKey.publicKey");
  const kyberOneTime = upload.kyberPreKeys ?? [];
  for (const [i, k] of kyberOneTime.entries()) checkKyber(k.publicKey, `kyberPreKeys.${i}.publicKey`);
  verify(identity, upload.signedPreKey, "signedPreKey");
  verify(identity, upload.kyberPreKey, "kyberPreKey");
  for (const [i, k] of kyberOneTime.entries()) verify(identity, k, `kyberPreKeys.${i}`);
  return upload;
}

/** The Signal key directory: devices publish signed keys, other users fetch one bundle per device. */
export class KeyService {
  constructor(
    private readonly db: Db,
    private readonly limiter: RateLimiter,
    private readonly limits: typeof KEY_FETCH_LIMITS = KEY_FETCH_LIMITS,
    private readonly audit?: AuditTrail,
    /** Users whose erasure has started: their keys are not handed out (`not_found`). */
    private readonly erasing?: ErasureFence,
  ) {}

  /**
   * Stores the caller's keys. The signed prekey and last-resort Kyber key replace the current ones;
   * a list of one-time keys, when given, replaces that kind's remaining one-time keys (as Signal-Server
   * does). A new identity key discards every one-time key signed by or issued under the old one.
   * A one-time key already handed out in a bundle (same kind, id and public key: `handed_out_pre_keys`)
   * is skipped: a retried upload of the same list, after fetches took some of it, does not put those
   * back. The `keys.upload` audit entry is written in the same transaction (a failed audit write stores
   * nothing).
   */
  async upload(principal: Principal, body: KeysModel.Upload): Promise<void> {
    const keys = checkUpload(body);
    const { userId, deviceId } = principal;
    const owner = { userId, deviceId };
    const event: AuditEvent = {
      action: "keys.upload",
      actor: { user: userId },
      subject: userId,
      details: { deviceId, preKeys: keys.preKeys?.length ?? 0, kyberPreKeys: keys.kyberPreKeys?.length ?? 0 },
    };
    let audited = false;
    await this.db.transaction(async (tx) => {
      // Serialises concurrent uploads of one device; the device may have been removed since the token was issued.
      const [device] = await tx
        .select({ deviceId: devices.deviceId })
        .from(devices)
        .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)))
        .for("update");
      if (!device) throw new DomainError("unauthorized", "device no longer exists");
      const ofDevice = (table: { userId: AnyPgColumn; deviceId: AnyPgColumn }) =>
        and(eq(table.userId, userId), eq(table.deviceId, deviceId));

      const [current] = await tx
        .select({ publicKey: identityKeys.publicKey })
        .from(identityKeys)
        .where(ofDevice(identityKeys));
      const identityChanged = current && !Buffer.from(current.publicKey).equals(keys.identityKey);
      if (identityChanged || keys.preKeys) await tx.delete(oneTimePreKeys).where(ofDevice(oneTimePreKeys));
      if (identityChanged || keys.kyberPreKeys) {
        await tx.delete(oneTimeKyberPreKeys).where(ofDevice(oneTimeKyberPreKeys));
      }
      await tx
        .insert(identityKeys)
        .values({ ...owner, publicKey: keys.identityKey })
        .onConflictDoUpdate({
          target: [identityKeys.userId, identityKeys.deviceId],
          set: { publicKey: keys.identityKey, updatedAt: sql`now()` },
        });
      for (const table of [signedPreKeys, kyberLastResortKeys]) {
        const key = table === signedPreKeys ? keys.signedPreKey : keys.kyberPreKey;
        await tx
          .insert(table)
          .values({ ...owner, ...key })
          .onConflictDoUpdate({ target: [table.userId, table.deviceId], set: key });
      }
      // Read under the device's lock: a fetch (FOR SHARE on it) that took keys has committed.
      const preKeys = await this.notHandedOut(tx, owner, "ec", keys.preKeys);
      if (preKeys.length) await tx.insert(oneTimePreKeys).values(preKeys.map((k) => ({ ...owner, ...k })));
      const kyberPreKeys = await this.notHandedOut(tx, owner, "kyber", keys.kyberPreKeys);
      if (kyberPreKeys.length) {
        await tx.insert(oneTimeKyberPreKeys).values(kyberPreKeys.map((k) => ({ ...owner, ...k })));
      }
      // Last in the upload's own transaction: the keys and their entry commit together, or neither.
      if (this.audit?.recordIn) {
        await this.audit.recordIn(tx, [event]);
        audited = true;
      }
    });
    // A trail that cannot write inside the transaction: recorded after the commit.
    if (!audited) await this.audit?.record(event);
  }

  /** How many one-time keys of each kind the caller's device has left. */
  async count(principal: Principal): Promise<{ preKeys: number; kyberPreKeys: number }> {
    const { userId, deviceId } = principal;
    const [[ec], [kyber]] = await Promise.all([
      this.db
        .select({ n: count() })
        .from(oneTimePreKeys)
        .where(and(eq(oneTimePreKeys.userId, userId), eq(oneTimePreKeys.deviceId, deviceId))),
      this.db
        .select({ n: count() })
        .from(oneTimeKyberPreKeys)
        .where(and(eq(oneTimeKyberPreKeys.userId, userId), eq(oneTimeKyberPreKeys.deviceId, deviceId))),
    ]);
    return { preKeys: ec.n, kyberPreKeys: kyber.n };
  }

  /**
   * One prekey bundle per device of `userId` that has published keys. Each call consumes one one-time
   * EC key and one one-time Kyber key per device (the last-resort Kyber key when none are left).
   * Rate-limited per requesting device and its account (the device's budget first: a device refused
   * spends nothing of its account's), overall and per target (`KEY_FETCH_LIMITS`).
   *
   * One transaction, which first takes the target's device rows FOR SHARE (`upload` takes its
   * device's row FOR UPDATE), then reads the keys and takes the one-time keys: an upload that
   * changes the identity key waits for the fetch or comes before all of it, so a bundle never pairs
   * an identity key with one-time keys of another (read apart, a new identity committed between the
   * two reads paired the old identity with the new one-time keys: the session failed and the key
   * was spent). Concurrent fetches share the lock. The lock and the reads are separate statements:
   * a join that waited for the lock would still return the keys of its older snapshot. Every budget
   * is spent before the transaction: no connection or lock is held while the limiter answers.
   */
  async fetchBundle(requester: Principal, userId: string): Promise<KeysModel.Bundle> {
    const who = `${requester.userId}.${requester.deviceId}`;
    if (this.erasing?.has(userId)) throw new DomainError("not_found", "no such user");
    await this.spend(this.limits.perRequester, who);
    await this.spend(this.limits.perAccount, requester.userId);
    // Counted once the user is known to exist: a counter keyed by a made-up id is never written.
    // Before the transaction and its lock: a limiter that is slow (Redis reconnecting) held a pooled
    // connection (PGlite: the database's one queue) and the target's device rows per waiting fetch,
    // so the node's database stalled with it (test/keys/slow-limiter.test.ts). Still before any
    // one-time key is taken.
    const [target] = await this.db.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId));
    if (!target) throw new DomainError("not_found", "no such user");
    await this.spend(this.limits.perTarget, `${who}:${userId}`);
    await this.spend(this.limits.perAccountTarget, `${requester.userId}:${userId}`);

    return this.db.transaction(async (tx) => {
      const locked = await tx
        .select({ deviceId: devices.deviceId })
        .from(devices)
        .where(eq(devices.userId, userId))
        .for("share");
      const rows =
        locked.length === 0
          ? []
          : await tx
              .select({
                deviceId: devices.deviceId,
                registrationId: devices.registrationId,
                identityKey: identityKeys.publicKey,
                signedKeyId: signedPreKeys.keyId,
                signedPublicKey: signedPreKeys.publicKey,
                signedSignature: signedPreKeys.signature,
                kyberKeyId: kyberLastResortKeys.keyId,
                kyberPublicKey: kyberLastResortKeys.publicKey,
                kyberSignature: kyberLastResortKeys.signature,
              })
              .from(devices)
              .innerJoin(
                identityKeys,
                and(eq(identityKeys.userId, devices.userId), eq(identityKeys.deviceId, devices.deviceId)),
              )
              .innerJoin(
                signedPreKeys,
                and(eq(signedPreKeys.userId, devices.userId), eq(signedPreKeys.deviceId, devices.deviceId)),
              )
              .innerJoin(
                kyberLastResortKeys,
                and(
                  eq(kyberLastResortKeys.userId, devices.userId),
                  eq(kyberLastResortKeys.deviceId, devices.deviceId),
                ),
              )
              // Only the devices locked: one added since (unlocked) could change keys meanwhile.
              .where(
                and(
                  eq(devices.userId, userId),
                  inArray(
                    devices.deviceId,
                    locked.map((d) => d.deviceId),
                  ),
                ),
              )
              .orderBy(asc(devices.deviceId));
      if (rows.length === 0) {
        // Erased since the look-up above.
        const [account] = await tx.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId));
        if (!account) throw new DomainError("not_found", "no such user");
      }

      // On the transaction's one connection: postgres.js pipelines them, PGlite runs them in turn.
      const bundles = await Promise.all(
        rows.map(async (row) => {
          const [preKey, kyberOneTime] = await Promise.all([
            this.takePreKey(tx, userId, row.deviceId),
            this.takeKyberPreKey(tx, userId, row.deviceId),
          ]);
          const kyber = kyberOneTime ?? {
            keyId: row.kyberKeyId,
            publicKey: row.kyberPublicKey,
            signature: row.kyberSignature,
          };
          return {
            deviceId: row.deviceId,
            registrationId: row.registrationId,
            identityKey: toBase64(row.identityKey),
            signedPreKey: {
              keyId: row.signedKeyId,
              publicKey: toBase64(row.signedPublicKey),
              signature: toBase64(row.signedSignature),
            },
            kyberPreKey: {
              keyId: kyber.keyId,
              publicKey: toBase64(kyber.publicKey),
              signature: toBase64(kyber.signature),
            },
            preKey: preKey ? { keyId: preKey.keyId, publicKey: toBase64(preKey.publicKey) } : null,
          };
        }),
      );
      return { userId, devices: bundles };
    });
  }

  /** `keys` less those a bundle already handed out (same kind, key id and public key). */
  private async notHandedOut<K extends { keyId: number; publicKey: Uint8Array }>(
    tx: Tx,
    owner: { userId: string; deviceId: number },
    kind: "ec" | "kyber",
    keys: K[] | undefined,
  ): Promise<K[]> {
    if (!keys?.length) return [];
    const spent = await tx
      .select({ keyId: handedOutPreKeys.keyId, digest: handedOutPreKeys.publicKeySha256 })
      .from(handedOutPreKeys)
      .where(
        and(
          eq(handedOutPreKeys.userId, owner.userId),
          eq(handedOutPreKeys.deviceId, owner.deviceId),
          eq(handedOutPreKeys.kind, kind),
          inArray(
            handedOutPreKeys.keyId,
            keys.map((k) => k.keyId),
          ),
        ),
      );
    if (spent.length === 0) return keys;
    const digests = new Map(spent.map((r) => [r.keyId, Buffer.from(r.digest)]));
    return keys.filter((k) => !digests.get(k.keyId)?.equals(sha256(k.publicKey)));
  }

  /** Records a one-time key as handed out, in the fetch's transaction: `upload` never stores it again. */
  private async recordHandedOut(
    tx: Tx,
    userId: string,
    deviceId: number,
    kind: "ec" | "kyber",
    key: { keyId: number; publicKey: Uint8Array },
  ): Promise<void> {
    const publicKeySha256 = sha256(key.publicKey);
    await tx
      .insert(handedOutPreKeys)
      .values({ userId, deviceId, kind, keyId: key.keyId, publicKeySha256 })
      .onConflictDoUpdate({
        target: [
          handedOutPreKeys.userId,
          handedOutPreKeys.deviceId,
          handedOutPreKeys.kind,
          handedOutPreKeys.keyId,
        ],
        set: { publicKeySha256, handedOutAt: sql`now()` },
      });
  }

  private spend(rule: RateLimitRule, key: string): Promise<void> {
    return spendOrRefuse(this.limiter, rule, key, "too many key fetches, retry later");
  }

  /**
   * Deletes and returns one one-time EC key, recorded as handed out, inside `tx` (the fetch's). The row is picked with FOR UPDATE SKIP LOCKED, so
   * concurrent fetchers each take a different key instead of waiting for, then losing, the same one.
   */
  private async takePreKey(tx: Tx, userId: string, deviceId: number) {
    const ofDevice = and(eq(oneTimePreKeys.userId, userId), eq(oneTimePreKeys.deviceId, deviceId));
    const pick = tx
      .select({ keyId: oneTimePreKeys.keyId })
      .from(oneTimePreKeys)
      .where(ofDevice)
      .orderBy(asc(oneTimePreKeys.keyId))
      .limit(1)
      .for("update", { skipLocked: true });
    const [taken] = await tx
      .delete(oneTimePreKeys)
      .where(and(ofDevice, sql`${oneTimePreKeys.keyId} = (${pick})`))
      .returning({ keyId: oneTimePreKeys.keyId, publicKey: oneTimePreKeys.publicKey });
    if (taken) await this.recordHandedOut(tx, userId, deviceId, "ec", taken);
    return taken;
  }

  /** Deletes and returns one one-time Kyber key, as takePreKey does for EC keys. */
  private async takeKyberPreKey(tx: Tx, userId: string, deviceId: number) {
    const ofDevice = and(eq(oneTimeKyberPreKeys.userId, userId), eq(oneTimeKyberPreKeys.deviceId, deviceId));
    const pick = tx
      .select({ keyId: oneTimeKyberPreKeys.keyId })
      .from(oneTimeKyberPreKeys)
      .where(ofDevice)
      .orderBy(asc(oneTimeKyberPreKeys.keyId))
      .limit(1)
      .for("update", { skipLocked: true });
    const [taken] = await tx
      .delete(oneTimeKyberPreKeys)
      .where(and(ofDevice, sql`${oneTimeKyberPreKeys.keyId} = (${pick})`))
      .returning({
        keyId: oneTimeKyberPreKeys.keyId,
        publicKey: oneTimeKyberPreKeys.publicKey,
        signature: oneTimeKyberPreKeys.signature,
      });
    if (taken) await this.recordHandedOut(tx, userId, deviceId, "kyber", taken);
    return taken;
  }
}
