import {
  type IdentityKeyPair,
  KEMKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PrivateKey,
  SignedPreKeyRecord,
} from "@signalapp/libsignal-client";
import type { KeyUpload, SignedKeyJson } from "./http.ts";
import type { AccountStore } from "./store.ts";

/** One-time keys of each kind generated per upload (the server's per-upload maximum). */
export const ONE_TIME_KEY_BATCH = 100;

const base64 = (value: Uint8Array) => Buffer.from(value).toString("base64");

/** Generates a signed EC prekey, stores its private half, and returns the public half for upload. */
export async function generateSignedPreKey(
  store: AccountStore,
  identity: IdentityKeyPair,
): Promise<SignedKeyJson> {
  const [keyId] = store.nextIds("nextSignedPreKeyId", 1);
  const privateKey = PrivateKey.generate();
  const publicKey = privateKey.getPublicKey();
  const signature = identity.privateKey.sign(publicKey.serialize());
  const record = SignedPreKeyRecord.new(keyId, Date.now(), publicKey, privateKey, signature);
  await store.signedPreKeys.saveSignedPreKey(keyId, record);
  store.set("signedPreKeyId", keyId);
  return { keyId, publicKey: base64(publicKey.serialize()), signature: base64(signature) };
}

/** Generates `count` signed Kyber1024 prekeys (one-time, or the last-resort one). */
export async function generateKyberPreKeys(
  store: AccountStore,
  identity: IdentityKeyPair,
  count: number,
  lastResort = false,
): Promise<SignedKeyJson[]> {
  const keys: SignedKeyJson[] = [];
  for (const keyId of store.nextIds("nextKyberPreKeyId", count)) {
    const pair = KEMKeyPair.generate();
    const publicKey = pair.getPublicKey().serialize();
    const signature = identity.privateKey.sign(publicKey);
    await store.kyberPreKeys.saveKyberPreKey(
      keyId,
      KyberPreKeyRecord.new(keyId, Date.now(), pair, signature),
      lastResort,
    );
    if (lastResort) store.set("kyberLastResortId", keyId);
    keys.push({ keyId, publicKey: base64(publicKey), signature: base64(signature) });
  }
  return keys;
}

/** Generates `count` one-time EC prekeys. */
export async function generatePreKeys(
  store: AccountStore,
  count: number,
): Promise<{ keyId: number; publicKey: string }[]> {
  const keys: { keyId: number; publicKey: string }[] = [];
  for (const keyId of store.nextIds("nextPreKeyId", count)) {
    const privateKey = PrivateKey.generate();
    const publicKey = privateKey.getPublicKey();
    await store.preKeys.savePreKey(keyId, PreKeyRecord.new(keyId, publicKey, privateKey));
    keys.push({ keyId, publicKey: base64(publicKey.serialize()) });
  }
  return keys;
}

/** The current signed prekey and last-resort Kyber key, read back from the store for a re-upload. */
export async function currentSignedKeys(
  store: AccountStore,
): Promise<{ signedPreKey: SignedKeyJson; kyberPreKey: SignedKeyJson } | undefined> {
  const signedId = store.get<number>("signedPreKeyId");
  const kyberId = store.get<number>("kyberLastResortId");
  if (signedId === undefined || kyberId === undefined) return undefined;
  const signed = await store.signedPreKeys.getSignedPreKey(signedId);
  const kyber = await store.kyberPreKeys.getKyberPreKey(kyberId);
  return {
    signedPreKey: {
      keyId: signedId,
      publicKey: base64(signed.publicKey().serialize()),
      signature: base64(signed.signature()),
    },
    kyberPreKey: {
      keyId: kyberId,
      publicKey: base64(kyber.publicKey().serialize()),
      signature: base64(kyber.signature()),
    },
  };
}

/**
 * A complete first upload: identity, a fresh signed prekey, a last-resort Kyber key and
 * `oneTime` one-time keys of each kind. Private halves are stored before the body is returned.
 */
export async function generateFullUpload(
  store: AccountStore,
  identity: IdentityKeyPair,
  oneTime = ONE_TIME_KEY_BATCH,
): Promise<KeyUpload> {
  return {
    identityKey: base64(identity.publicKey.serialize()),
    signedPreKey: await generateSignedPreKey(store, identity),
    kyberPreKey: (await generateKyberPreKeys(store, identity, 1, true))[0],
    preKeys: await generatePreKeys(store, oneTime),
    kyberPreKeys: await generateKyberPreKeys(store, identity, oneTime),
  };
}
