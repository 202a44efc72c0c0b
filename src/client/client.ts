import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import {
  CiphertextMessageType,
  Fingerprint,
  KEMPublicKey,
  PreKeyBundle,
  PreKeySignalMessage,
  ProtocolAddress,
  PublicKey,
  processPreKeyBundle,
  processSenderKeyDistributionMessage,
  SenderKeyDistributionMessage,
  SignalMessage,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
  groupDecrypt as signalGroupDecrypt,
  groupEncrypt as signalGroupEncrypt,
} from "@signalapp/libsignal-client";
import type { GroupSend } from "../protocol/index.ts";
import {
  ClearBoxApiError,
  ClearBoxHttp,
  type DeviceBundle,
  type DeviceSignInPrompt,
  type SessionTokens,
  type UserInfo,
} from "./http.ts";
import {
  currentSignedKeys,
  generateFullUpload,
  generateKyberPreKeys,
  generatePreKeys,
  ONE_TIME_KEY_BATCH,
} from "./keys.ts";
import { ClearBoxSocket, type OutgoingMessage } from "./socket.ts";
import { AccountStore } from "./store.ts";

type Bytes = Uint8Array<ArrayBuffer>;
const fromBase64 = (value: string): Bytes => new Uint8Array(Buffer.from(value, "base64"));
const toBase64 = (value: Uint8Array) => Buffer.from(value).toString("base64");
const encoder = new TextEncoder();

/** Waits `ms`, or rejects as soon as `signal` aborts. */
function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}
const asBytes = (message: Uint8Array | string): Bytes =>
  typeof message === "string" ? encoder.encode(message) : new Uint8Array(message);

/** Signal's safety-number parameters (libsignal `Fingerprint`, as Signal-Android and Desktop use them). */
const SAFETY_NUMBER_VERSION = 2;
const SAFETY_NUMBER_ITERATIONS = 5200;
const uuidBytes = (uuid: string): Bytes => new Uint8Array(Buffer.from(uuid.replaceAll("-", ""), "hex"));

/** Replenish one-time keys when fewer than this many of a kind remain on the server. */
export const REPLENISH_THRESHOLD = 20;

export interface ClearBoxClientOptions {
  /** Base URL of a ClearBox node, e.g. http://127.0.0.1:8080; defaults to the one saved in the store. */
  serverUrl?: string;
  /** The account's SQLite file; `:memory:` for a throwaway client. */
  storePath: string;
  /**
   * PEM CA certificate(s) to trust for an https server instead of the system's, for a server whose
   * certificate comes from a private CA. Not saved in the store. (NODE_EXTRA_CA_CERTS=<file> adds
   * to the system's CAs for the whole process instead.)
   */
  ca?: string;
}

/** A received ciphertext: who sent it and libsignal's envelope (type 2, 3 or 7, base64 body). */
export interface IncomingEnvelope {
  from: { user: string; device: number };
  envelope: { type: number; body: string };
}

/**
 * A ClearBox account on one device: HTTP API, Signal-protocol state persisted in `storePath`, and
 * 1:1 and sender-key encryption. Reopening the same store resumes the account and its sessions.
 */
export class ClearBoxClient {
  readonly http: ClearBoxHttp;
  /** Tail of the queue that runs protocol operations one at a time (see `serialized`). */
  private tail: Promise<unknown> = Promise.resolve();
  private current: AccountStore;

  private constructor(
    store: AccountStore,
    readonly serverUrl: string,
    /** PEM CA certificates trusted for an https server (not saved in the store). */
    readonly ca?: string,
    /** The file this store is written to once a registration or login succeeds (see `open`). */
    private pendingPath?: string,
  ) {
    this.current = store;
    this.http = new ClearBoxHttp(
      serverUrl,
      {
        tokens: () => this.store.get<SessionTokens>("tokens"),
        setTokens: (tokens) => this.store.set("tokens", tokens),
      },
      ca,
    );
  }

  /** The account's local state (SQLite): in memory until the first successful sign-in when the file did not exist. */
  get store(): AccountStore {
    return this.current;
  }

  /**
   * Opens the account store. `serverUrl` is the server of this client only; the store's saved one is
   * used when it is not given, and is replaced only when a registration, login or sign-in on
   * `serverUrl` succeeds (a one-off `--server`, or a typo in it, does not change later runs' server).
   * A store file that does not exist yet is not created here: the state is kept in memory and
   * written to `storePath` only when a registration, login or sign-in succeeds, so a failed attempt
   * leaves no file behind. Throws when no server URL is given and none is saved.
   */
  static open(options: ClearBoxClientOptions): ClearBoxClient {
    const deferred = options.storePath !== ":memory:" && !existsSync(options.storePath);
    const store = new AccountStore(deferred ? ":memory:" : options.storePath);
    const serverUrl = options.serverUrl ?? store.get<string>("serverUrl");
    if (!serverUrl) {
      store.close();
      throw new Error("no server URL given and none saved in the store");
    }
    return new ClearBoxClient(store, serverUrl, options.ca, deferred ? options.storePath : undefined);
  }

  /** Whether the store is still held in memory only (no successful sign-in yet for a new file). */
  get persisted(): boolean {
    return this.pendingPath === undefined;
  }

  /** Writes an in-memory store to its file (`AccountStore.copyTo`, 0600) and continues on the file. */
  private persist(): void {
    const path = this.pendingPath;
    if (path === undefined) return;
    this.current.copyTo(path);
    const file = new AccountStore(path);
    this.current.close();
    this.current = file;
    this.pendingPath = undefined;
    for (const listener of this.persistListeners) listener(file);
  }

  private readonly persistListeners: ((store: AccountStore) => void)[] = [];

  /** Called when the in-memory store moved to its file (its `AccountStore` object changed). */
  onStoreReplaced(listener: (store: AccountStore) => void): void {
    this.persistListeners.push(listener);
  }

  get userId(): string {
    return this.account().userId;
  }

  get deviceId(): number {
    return this.account().deviceId;
  }

  get username(): string | undefined {
    return this.store.get<string>("username");
  }

  /**
   * Creates the account, logs this device in and uploads its keys. Throws, before asking the server,
   * when the store holds another account (`assertStoreIsFor`).
   */
  async register(username: string, password: string, deviceName?: string): Promise<void> {
    this.assertStoreIsFor(username);
    await this.http.register(username, password);
    await this.login(username, password, deviceName);
  }

  /**
   * Logs in: as the device saved in this store when it belongs to `username`, else (a store that
   * holds no account yet) as a new device with a fresh identity. Uploads keys if this device has
   * not yet done so. Throws, before asking the server, when the store holds another account
   * (`assertStoreIsFor`).
   */
  async login(username: string, password: string, deviceName?: string): Promise<void> {
    this.assertStoreIsFor(username);
    const { registrationId } = this.store.identity.ensureIdentity();
    const known =
      this.store.get<string>("username") === username ? this.store.get<number>("deviceId") : undefined;
    const tokens = await this.http.login({
      username,
      password,
      ...(known === undefined ? { registrationId, deviceName } : { deviceId: known }),
    });
    this.store.set("username", username);
    this.store.set("userId", tokens.userId);
    this.store.set("deviceId", tokens.deviceId);
    this.store.set("serverUrl", this.serverUrl);
    this.rememberUser({ userId: tokens.userId, username });
    if (!this.store.get<boolean>("keysUploaded")) await this.bootstrapKeys();
    this.persist();
  }

  /**
   * A store holds one account: its identity key, sessions, sender keys and history. Signing another
   * account in on it made a new device of that account with the first one's identity key and,
   * since the store's keys counted as uploaded, no keys on the server (a device nobody could write
   * to), and mixed the two accounts' sessions and history. Throws an Error naming the account the
   * store holds; nothing is sent.
   */
  private assertStoreIsFor(username: string): void {
    const userId = this.store.get<string>("userId");
    if (userId === undefined) return;
    const held = this.store.get<string>("username");
    if (held === username) return;
    throw new Error(
      held === undefined
        ? `this store holds the account ${userId}, signed in with the identity provider: sign in again with signin, or use another store for ${username}`
        : `this store holds the account ${held}: use another store for ${username}`,
    );
  }

  /**
   * Native sign-in with the organisation's identity provider, needing no browser on this machine
   * (OAuth 2.0 device authorization grant, RFC 8628): `onPrompt` is told where the user signs in
   * (on any device) and which code to enter; the server is polled at the interval it asks for
   * until the user approved (then this device is signed in and its keys uploaded), denied, or the
   * code expired (a `ClearBoxApiError` 401). `signal` aborts the wait.
   */
  async signInWithDeviceCode(options: {
    onPrompt: (prompt: DeviceSignInPrompt) => void | Promise<void>;
    deviceName?: string;
    signal?: AbortSignal;
  }): Promise<void> {
    const prompt = await this.http.oidcDeviceStart();
    await options.onPrompt(prompt);
    let interval = prompt.interval;
    const deadline = Date.now() + prompt.expiresIn * 1000;
    while (Date.now() < deadline) {
      await abortableSleep(interval * 1000, options.signal);
      const poll = await this.http.oidcDevicePoll(prompt.deviceCode, interval);
      if (poll.status === "done") return this.completeSignIn(poll.code, { deviceName: options.deviceName });
      interval = poll.interval;
    }
    throw new ClearBoxApiError(401, "unauthorized", "the sign-in code expired before it was approved");
  }

  /**
   * A browser sign-in for a client that can open a browser and receive its return (e.g. on a
   * loopback listener, RFC 8252): the URL to open and the PKCE verifier to keep. When the browser
   * comes back to `returnUri?code=…`, call `completeSignIn(code, { codeVerifier })`.
   */
  beginBrowserSignIn(returnUri: string): { url: string; codeVerifier: string } {
    const codeVerifier = randomBytes(32).toString("base64url");
    const url = new URL("/v1/oidc/authorize", this.serverUrl);
    url.searchParams.set("redirect_uri", returnUri);
    url.searchParams.set("code_challenge", createHash("sha256").update(codeVerifier).digest("base64url"));
    url.searchParams.set("code_challenge_method", "S256");
    return { url: url.href, codeVerifier };
  }

  /**
   * Spends a one-time sign-in code (browser or device flow) for a session: as this store's device
   * when the store already holds the account (a code of another account is refused), else as a new
   * device with a fresh identity. Uploads keys if this device has not yet done so.
   */
  async completeSignIn(
    code: string,
    options: { codeVerifier?: string; deviceName?: string } = {},
  ): Promise<void> {
    const { registrationId } = this.store.identity.ensureIdentity();
    const userId = this.store.get<string>("userId");
    const deviceId = this.store.get<number>("deviceId");
    const tokens = await this.http.oidcSession({
      code,
      codeVerifier: options.codeVerifier,
      ...(userId && deviceId !== undefined
        ? { userId, deviceId }
        : { registrationId, deviceName: options.deviceName }),
    });
    this.store.set("userId", tokens.userId);
    this.store.set("deviceId", tokens.deviceId);
    this.store.set("serverUrl", this.serverUrl);
    if (!this.store.get<boolean>("keysUploaded")) await this.bootstrapKeys();
    this.persist();
  }

  /** Uploads identity, a signed prekey, a last-resort Kyber key and 100 one-time keys of each kind. */
  async bootstrapKeys(oneTime = ONE_TIME_KEY_BATCH): Promise<void> {
    const { identity } = this.store.identity.ensureIdentity();
    await this.http.uploadKeys(await generateFullUpload(this.store, identity, oneTime));
    this.store.set("keysUploaded", true);
  }

  /**
   * Tops up one-time keys when the server holds fewer than `threshold` of a kind: a fresh batch of
   * that kind replaces what is left. Returns which kinds were uploaded.
   */
  async replenishKeys(threshold = REPLENISH_THRESHOLD): Promise<{ preKeys: boolean; kyberPreKeys: boolean }> {
    const counts = await this.http.keyCount();
    const low = { preKeys: counts.preKeys < threshold, kyberPreKeys: counts.kyberPreKeys < threshold };
    if (!low.preKeys && !low.kyberPreKeys) return low;
    const { identity } = this.store.identity.ensureIdentity();
    const signed = await currentSignedKeys(this.store);
    if (!signed) throw new Error("no signed keys in the store: bootstrap first");
    await this.http.uploadKeys({
      identityKey: toBase64(identity.publicKey.serialize()),
      ...signed,
      ...(low.preKeys ? { preKeys: await generatePreKeys(this.store, ONE_TIME_KEY_BATCH) } : {}),
      ...(low.kyberPreKeys
        ? { kyberPreKeys: await generateKyberPreKeys(this.store, identity, ONE_TIME_KEY_BATCH) }
        : {}),
    });
    return low;
  }

  /**
   * Encrypts one message for every device of `userId` (this device excluded): existing sessions are
   * reused; with none, or with `refreshDevices`, the user's bundles are fetched and new sessions started.
   */
  encrypt(
    userId: string,
    message: Uint8Array | string,
    options: { refreshDevices?: boolean } = {},
  ): Promise<OutgoingMessage[]> {
    return this.serialized(() => this.encryptNow(userId, message, options));
  }

  private async encryptNow(
    userId: string,
    message: Uint8Array | string,
    options: { refreshDevices?: boolean },
  ): Promise<OutgoingMessage[]> {
    const self = this.address();
    let deviceIds = this.store.sessions.deviceIds(userId);
    if (deviceIds.length === 0 || options.refreshDevices) {
      const bundle = await this.http.fetchBundle(userId);
      for (const device of bundle.devices) {
        if (userId === this.userId && device.deviceId === this.deviceId) continue;
        await this.startSession(userId, device);
      }
      deviceIds = bundle.devices.map((d) => d.deviceId);
      for (const stale of this.store.sessions.deviceIds(userId)) {
        if (!deviceIds.includes(stale)) this.store.sessions.remove(userId, stale);
      }
    }
    const plaintext = asBytes(message);
    const out: OutgoingMessage[] = [];
    for (const deviceId of deviceIds) {
      if (userId === this.userId && deviceId === this.deviceId) continue;
      const ciphertext = await signalEncrypt(
        plaintext,
        ProtocolAddress.new(userId, deviceId),
        self,
        this.store.sessions,
        this.store.identity,
      );
      const type = ciphertext.type();
      // signalEncrypt yields a Whisper message, or a PreKey message while the session is new.
      if (type !== CiphertextMessageType.Whisper && type !== CiphertextMessageType.PreKey) {
        throw new Error(`libsignal produced an unexpected 1:1 message type ${type}`);
      }
      out.push({ deviceId, type, body: toBase64(ciphertext.serialize()) });
    }
    return out;
  }

  /** Decrypts a 1:1 message (type 3 starts a session, type 2 continues one). */
  decrypt(incoming: IncomingEnvelope): Promise<Uint8Array> {
    return this.serialized(() => this.decryptNow(incoming));
  }

  private async decryptNow({ from, envelope }: IncomingEnvelope): Promise<Uint8Array> {
    const sender = ProtocolAddress.new(from.user, from.device);
    const body = fromBase64(envelope.body);
    const { sessions, identity, preKeys, signedPreKeys, kyberPreKeys } = this.store;
    if (envelope.type === CiphertextMessageType.PreKey) {
      return signalDecryptPreKey(
        PreKeySignalMessage.deserialize(body),
        sender,
        this.address(),
        sessions,
        identity,
        preKeys,
        signedPreKeys,
        kyberPreKeys,
      );
    }
    if (envelope.type === CiphertextMessageType.Whisper) {
      return signalDecrypt(SignalMessage.deserialize(body), sender, this.address(), sessions, identity);
    }
    if (envelope.type === CiphertextMessageType.SenderKey) return this.groupDecryptNow(from, envelope.body);
    throw new Error(`unsupported envelope type ${envelope.type}`);
  }

  /** Decrypts and decodes a UTF-8 text message. */
  async decryptText(incoming: IncomingEnvelope): Promise<string> {
    return new TextDecoder().decode(await this.decrypt(incoming));
  }

  /**
   * This device's sender key for `distributionId` (a UUID per group), as a distribution message to
   * send 1:1 to every member device before the first group message.
   */
  groupDistribution(distributionId: string): Promise<Uint8Array> {
    return this.serialized(async () => {
      const message = await SenderKeyDistributionMessage.create(
        this.address(),
        distributionId,
        this.store.senderKeys,
      );
      return message.serialize();
    });
  }

  /** Stores a member device's sender key received in a distribution message. */
  processGroupDistribution(from: { user: string; device: number }, distribution: Uint8Array): Promise<void> {
    return this.serialized(() =>
      processSenderKeyDistributionMessage(
        ProtocolAddress.new(from.user, from.device),
        SenderKeyDistributionMessage.deserialize(new Uint8Array(distribution)),
        this.store.senderKeys,
      ),
    );
  }

  /** One sender-key ciphertext (type 7) that every member device holding our sender key can read. */
  groupEncrypt(distributionId: string, message: Uint8Array | string): Promise<GroupSend["message"]> {
    return this.serialized(async () => {
      const ciphertext = await signalGroupEncrypt(
        this.address(),
        distributionId,
        this.store.senderKeys,
        asBytes(message),
      );
      if (ciphertext.type() !== CiphertextMessageType.SenderKey) {
        throw new Error(`libsignal produced an unexpected group message type ${ciphertext.type()}`);
      }
      return { type: CiphertextMessageType.SenderKey, body: toBase64(ciphertext.serialize()) };
    });
  }

  groupDecrypt(from: { user: string; device: number }, body: string): Promise<Uint8Array> {
    return this.serialized(() => this.groupDecryptNow(from, body));
  }

  private groupDecryptNow(from: { user: string; device: number }, body: string): Promise<Uint8Array> {
    return signalGroupDecrypt(
      ProtocolAddress.new(from.user, from.device),
      this.store.senderKeys,
      fromBase64(body),
    );
  }

  /**
   * Runs protocol operations one after another: libsignal reads a session, awaits, then writes it
   * back, so two interleaved operations on one session would lose a ratchet step.
   */
  private serialized<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.tail.then(operation);
    this.tail = result.catch(() => undefined);
    return result;
  }

  /**
   * The user named exactly `username`, from the local contact list or else the server
   * (`GET /v1/users?username=`, rate-limited per device); the answer is kept as a contact.
   * Throws ClearBoxApiError 404 `not_found` when no such user, 400 `invalid` for a malformed name.
   */
  async findUser(username: string): Promise<UserInfo> {
    const known = this.store.db
      .query<{ user_id: string }, [string]>("select user_id from contacts where username = ?")
      .get(username);
    if (known) return { userId: known.user_id, username };
    const found = await this.http.lookupUser(username);
    this.rememberUser(found);
    return found;
  }

  /** The username of `userId`, from the contact list or else the server (`GET /v1/users/:userId`). */
  async usernameOf(userId: string): Promise<string> {
    const known = this.store.db
      .query<{ username: string }, [string]>("select username from contacts where user_id = ?")
      .get(userId);
    if (known) return known.username;
    const found = await this.http.user(userId);
    this.rememberUser(found);
    return found.username;
  }

  /** Every user this store knows by name (looked up, or who wrote to us). */
  contacts(): UserInfo[] {
    return this.store.db
      .query<{ user_id: string; username: string }, []>(
        "select user_id, username from contacts order by username",
      )
      .all()
      .map((row) => ({ userId: row.user_id, username: row.username }));
  }

  /**
   * Keeps `user` as a contact, as the server just named them. A username names one account at a
   * time: another contact still held under this name is an account that was erased and whose name
   * was registered again, and is forgotten here (its history shows by user id), so `findUser` and
   * the safety numbers of that name follow the account now writing under it instead of the erased
   * one's, possibly verified, keys.
   */
  private rememberUser(user: UserInfo): void {
    const db = this.store.db;
    db.transaction(() => {
      db.query("delete from contacts where username = ? and user_id <> ?").run(user.username, user.userId);
      db.query(
        `insert into contacts (user_id, username) values (?, ?)
         on conflict (user_id) do update set username = excluded.username`,
      ).run(user.userId, user.username);
    })();
  }

  /**
   * The safety numbers with each device of `userId` whose identity key this store holds (after a
   * session was started either way): libsignal's `Fingerprint` (version 2, 5200 iterations, the
   * 16-byte user UUIDs as identifiers, as Signal computes them), 60 digits that both sides see
   * alike, shown in 12 groups of 5. `verified`: the key is the one the user last verified;
   * `changed`: the key changed since then (or since first use) — ask the user to compare again.
   */
  safetyNumbers(
    userId: string,
  ): { deviceId: number; safetyNumber: string; verified: boolean; changed: boolean }[] {
    const { identity } = this.store.identity.ensureIdentity();
    const changed = new Set(this.store.identity.changedDevices(userId));
    return this.store.identity.identitiesOf(userId).map(({ deviceId, publicKey }) => {
      const digits = Fingerprint.new(
        SAFETY_NUMBER_ITERATIONS,
        SAFETY_NUMBER_VERSION,
        uuidBytes(this.userId),
        identity.publicKey,
        uuidBytes(userId),
        publicKey,
      )
        .displayableFingerprint()
        .toString();
      return {
        deviceId,
        safetyNumber: digits.match(/.{5}/g)?.join(" ") ?? digits,
        verified: this.store.identity.isVerified(userId, deviceId, publicKey),
        changed: changed.has(deviceId),
      };
    });
  }

  /**
   * Whether every key held for `userId`'s devices is the verified one, and whether any changed since:
   * the flags of `safetyNumbers` without computing the numbers (5,200 hash iterations each).
   */
  trustOf(userId: string): { verified: boolean; changed: boolean } {
    const keys = this.store.identity.identitiesOf(userId);
    return {
      verified:
        keys.length > 0 && keys.every((k) => this.store.identity.isVerified(userId, k.deviceId, k.publicKey)),
      changed: this.store.identity.changedDevices(userId).length > 0,
    };
  }

  /**
   * The user compared the safety numbers out of band: trust the keys now held for `userId`. With
   * `compared` (the `safetyNumbers` entries the user was shown and compared), only the devices
   * whose number is still the one compared are trusted: a device added, or a key changed, after
   * the numbers were shown (a server adding a device while the user compares) is not vouched for
   * by a comparison that never saw it, and stays `changed`. Returns the device ids held for
   * `userId` that are left unverified (none without `compared`).
   */
  markVerified(userId: string, compared?: readonly { deviceId: number; safetyNumber: string }[]): number[] {
    if (!compared) {
      this.store.identity.markVerified(userId);
      return [];
    }
    const now = this.safetyNumbers(userId);
    const keys = new Map(this.store.identity.identitiesOf(userId).map((k) => [k.deviceId, k.publicKey]));
    const matching = now.filter((n) =>
      compared.some((c) => c.deviceId === n.deviceId && c.safetyNumber === n.safetyNumber),
    );
    this.store.identity.markVerified(
      userId,
      matching.flatMap((n) => {
        const publicKey = keys.get(n.deviceId);
        return publicKey ? [{ deviceId: n.deviceId, publicKey }] : [];
      }),
    );
    return now.filter((n) => !matching.includes(n)).map((n) => n.deviceId);
  }

  /**
   * Opens this device's WebSocket (the messaging gateway); it renews its access token in-band
   * (`auth` frames) before the token expires, for as long as it is open.
   */
  async connect(): Promise<ClearBoxSocket> {
    return ClearBoxSocket.connect(this.serverUrl, await this.http.accessToken(), this.ca, this.http);
  }

  /** Closes the store; the client cannot be used afterwards. */
  close(): void {
    this.store.close();
  }

  private async startSession(userId: string, device: DeviceBundle): Promise<void> {
    const bundle = PreKeyBundle.new(
      device.registrationId,
      device.deviceId,
      device.preKey?.keyId ?? null,
      device.preKey ? PublicKey.deserialize(fromBase64(device.preKey.publicKey)) : null,
      device.signedPreKey.keyId,
      PublicKey.deserialize(fromBase64(device.signedPreKey.publicKey)),
      fromBase64(device.signedPreKey.signature),
      PublicKey.deserialize(fromBase64(device.identityKey)),
      device.kyberPreKey.keyId,
      KEMPublicKey.deserialize(fromBase64(device.kyberPreKey.publicKey)),
      fromBase64(device.kyberPreKey.signature),
    );
    // libsignal checks both signatures against the identity key before starting the session.
    await processPreKeyBundle(
      bundle,
      ProtocolAddress.new(userId, device.deviceId),
      this.address(),
      this.store.sessions,
      this.store.identity,
    );
  }

  private address(): ProtocolAddress {
    return ProtocolAddress.new(this.userId, this.deviceId);
  }

  private account(): { userId: string; deviceId: number } {
    const userId = this.store.get<string>("userId");
    const deviceId = this.store.get<number>("deviceId");
    if (!userId || deviceId === undefined) throw new Error("not logged in");
    return { userId, deviceId };
  }
}
