import { Database } from "bun:sqlite";
import { chmodSync, closeSync, openSync, statSync } from "node:fs";
import {
  type Direction,
  IdentityChange,
  IdentityKeyPair,
  IdentityKeyStore,
  KyberPreKeyRecord,
  KyberPreKeyStore,
  PreKeyRecord,
  PreKeyStore,
  type PrivateKey,
  type ProtocolAddress,
  PublicKey,
  SenderKeyRecord,
  SenderKeyStore,
  SessionRecord,
  SessionStore,
  SignedPreKeyRecord,
  SignedPreKeyStore,
  type Uuid,
} from "@signalapp/libsignal-client";

type Bytes = Uint8Array<ArrayBuffer>;
const bytes = (value: Uint8Array): Bytes => new Uint8Array(value);

const SCHEMA = `
create table if not exists meta (key text primary key, value text not null);
create table if not exists identities (name text not null, device_id integer not null, public_key blob not null,
  primary key (name, device_id));
create table if not exists sessions (name text not null, device_id integer not null, record blob not null,
  primary key (name, device_id));
create table if not exists pre_keys (id integer primary key, record blob not null);
create table if not exists signed_pre_keys (id integer primary key, record blob not null);
create table if not exists kyber_pre_keys (id integer primary key, record blob not null, last_resort integer not null);
create table if not exists kyber_last_resort_uses (kyber_id integer not null, signed_id integer not null,
  base_key blob not null, primary key (kyber_id, signed_id, base_key));
create table if not exists sender_keys (name text not null, device_id integer not null, distribution_id text not null,
  record blob not null, primary key (name, device_id, distribution_id));
create table if not exists contacts (user_id text primary key, username text not null);
create table if not exists verified_identities (name text not null, device_id integer not null, public_key blob not null,
  primary key (name, device_id));
create table if not exists identity_changes (name text not null, device_id integer not null, changed_at integer not null,
  primary key (name, device_id));
create table if not exists outbox (seq integer primary key autoincrement, id text not null unique, kind text not null,
  target text not null, payload text not null, created_at integer not null);
create table if not exists group_keys (group_id text primary key, distribution_id text not null, shared_with text not null);
create table if not exists history (id text primary key, conversation text not null, sender text not null,
  sender_device integer not null, outgoing integer not null, text text not null, ts integer not null, state text not null);
create table if not exists received (id text primary key, at integer not null);
create table if not exists socket_lease (pid integer not null, heartbeat integer not null);
create index if not exists history_by_conversation on history (conversation, ts);
`;

/**
 * One account's local state in a SQLite file (or `:memory:`): identity, sessions, prekeys, sender
 * keys and small settings. Every write goes straight to disk, so a restarted client keeps its sessions.
 */
export class AccountStore {
  readonly db: Database;
  readonly identity: SqliteIdentityStore;
  readonly sessions: SqliteSessionStore;
  readonly preKeys: SqlitePreKeyStore;
  readonly signedPreKeys: SqliteSignedPreKeyStore;
  readonly kyberPreKeys: SqliteKyberPreKeyStore;
  readonly senderKeys: SqliteSenderKeyStore;

  /**
   * Opens (creating) the store at `path`. The file holds the identity private key, sessions and
   * history: it is made readable by its owner only (0600, also when an earlier version left it
   * 0644); SQLite gives its -wal and -shm files the main file's mode.
   */
  constructor(path: string) {
    if (path !== ":memory:") {
      closeSync(openSync(path, "a", 0o600));
      if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    }
    this.db = new Database(path, { create: true, strict: true });
    // A store is shared by a running session and short commands beside it (`send` queues into its
    // outbox, a second `chat` reads its lease): wait up to 5 s for the other's write instead of
    // failing at once with SQLITE_BUSY "database is locked" (https://sqlite.org/c3ref/busy_timeout.html).
    this.db.exec("pragma busy_timeout = 5000;");
    this.db.exec("pragma journal_mode = wal;");
    this.db.exec(SCHEMA);
    this.identity = new SqliteIdentityStore(this);
    this.sessions = new SqliteSessionStore(this.db);
    this.preKeys = new SqlitePreKeyStore(this.db);
    this.signedPreKeys = new SqliteSignedPreKeyStore(this.db);
    this.kyberPreKeys = new SqliteKyberPreKeyStore(this.db);
    this.senderKeys = new SqliteSenderKeyStore(this.db);
  }

  /**
   * Writes a copy of the whole store to `path` (SQLite `VACUUM INTO`), a file that must not exist
   * or be empty. The file is created 0600 first: `VACUUM INTO` would create it with the process's
   * default mode (0644), the identity private key readable by every local user until the store
   * reopened on it closed it.
   */
  copyTo(path: string): void {
    closeSync(openSync(path, "a", 0o600));
    this.db.query("vacuum into ?").run(path);
  }

  /** A JSON setting, or undefined. */
  get<T>(key: string): T | undefined {
    const row = this.db.query<{ value: string }, [string]>("select value from meta where key = ?").get(key);
    return row ? (JSON.parse(row.value) as T) : undefined;
  }

  set(key: string, value: unknown): void {
    this.db
      .query(
        "insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
      )
      .run(key, JSON.stringify(value));
  }

  /** Hands out `count` consecutive key ids from a persisted counter, wrapping within 24 bits. */
  nextIds(counter: string, count: number): number[] {
    const start = this.get<number>(counter) ?? 1 + Math.floor(Math.random() * 0xfff000);
    const ids = Array.from({ length: count }, (_, i) => ((start + i - 1) % 0xffffff) + 1);
    this.set(counter, (ids[ids.length - 1] % 0xffffff) + 1);
    return ids;
  }

  close(): void {
    this.db.close();
  }
}

/**
 * Trust on first use, per device: an unknown identity is saved; a changed one is accepted and
 * reported as `ReplacedExisting`, which the client surfaces as a safety-number change.
 */
export class SqliteIdentityStore extends IdentityKeyStore {
  constructor(private readonly store: AccountStore) {
    super();
  }

  /** Creates the identity key pair and registration id once; later calls keep the existing ones. */
  ensureIdentity(): { identity: IdentityKeyPair; registrationId: number } {
    let serialized = this.store.get<string>("identityKeyPair");
    if (!serialized) {
      serialized = Buffer.from(IdentityKeyPair.generate().serialize()).toString("base64");
      this.store.set("identityKeyPair", serialized);
      // Signal's registration ids are 14-bit and never 0; the server accepts 1-16380.
      this.store.set("registrationId", 1 + Math.floor(Math.random() * 16380));
    }
    return {
      identity: IdentityKeyPair.deserialize(bytes(Buffer.from(serialized, "base64"))),
      registrationId: this.store.get<number>("registrationId") as number,
    };
  }

  private pair(): IdentityKeyPair {
    const serialized = this.store.get<string>("identityKeyPair");
    if (!serialized) throw new Error("no identity yet: bootstrap the account first");
    return IdentityKeyPair.deserialize(bytes(Buffer.from(serialized, "base64")));
  }

  async getIdentityKey(): Promise<PrivateKey> {
    return this.pair().privateKey;
  }

  override async getIdentityKeyPair(): Promise<IdentityKeyPair> {
    return this.pair();
  }

  async getLocalRegistrationId(): Promise<number> {
    const id = this.store.get<number>("registrationId");
    if (id === undefined) throw new Error("no registration id yet: bootstrap the account first");
    return id;
  }

  /**
   * Stores a device's identity key. A key that replaces a different one, and a device new to a user
   * whose keys the user verified (each device has a key of its own here, so a server that adds a
   * device to a verified contact's account would otherwise read what follows unannounced), are
   * recorded as changes (`changedDevices`) and reported to `onIdentityChange` listeners.
   */
  async saveIdentity(name: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    const existing = await this.getIdentity(name);
    const newToVerifiedUser =
      !existing &&
      this.store.db
        .query<{ one: number }, [string]>("select 1 as one from verified_identities where name = ? limit 1")
        .get(name.name()) !== null;
    this.store.db
      .query(
        `insert into identities (name, device_id, public_key) values (?, ?, ?)
         on conflict (name, device_id) do update set public_key = excluded.public_key`,
      )
      .run(name.name(), name.deviceId(), key.serialize());
    if ((existing && !existing.equals(key)) || newToVerifiedUser) {
      this.store.db
        .query(
          `insert into identity_changes (name, device_id, changed_at) values (?, ?, ?)
           on conflict (name, device_id) do update set changed_at = excluded.changed_at`,
        )
        .run(name.name(), name.deviceId(), Date.now());
      for (const listener of this.changeListeners) listener(name.name(), name.deviceId());
      return existing ? IdentityChange.ReplacedExisting : IdentityChange.NewOrUnchanged;
    }
    return IdentityChange.NewOrUnchanged;
  }

  private readonly changeListeners: ((userId: string, deviceId: number) => void)[] = [];

  /**
   * Calls `listener(userId, deviceId)` whenever a device's identity key is replaced by a different
   * one (a reinstall, or a server substituting keys), or a verified user has a device not seen
   * before (a new login, or a server adding a device); the change stays recorded
   * (`changedDevices`) until the user verifies the new safety number (`markVerified`). Returns an
   * unsubscribe function.
   */
  onIdentityChange(listener: (userId: string, deviceId: number) => void): () => void {
    this.changeListeners.push(listener);
    return () => void this.changeListeners.splice(this.changeListeners.indexOf(listener), 1);
  }

  /** Every identity key held for `userId`'s devices, by device id. */
  identitiesOf(userId: string): { deviceId: number; publicKey: PublicKey }[] {
    return this.store.db
      .query<{ device_id: number; public_key: Uint8Array }, [string]>(
        "select device_id, public_key from identities where name = ? order by device_id",
      )
      .all(userId)
      .map((row) => ({ deviceId: row.device_id, publicKey: PublicKey.deserialize(bytes(row.public_key)) }));
  }

  /** Device ids of `userId` whose identity key changed since the user last verified them. */
  changedDevices(userId: string): number[] {
    return this.store.db
      .query<{ device_id: number }, [string]>(
        "select device_id from identity_changes where name = ? order by device_id",
      )
      .all(userId)
      .map((row) => row.device_id);
  }

  /** Whether the key now held for (userId, deviceId) is the one the user verified. */
  isVerified(userId: string, deviceId: number, key: PublicKey): boolean {
    const row = this.store.db
      .query<{ public_key: Uint8Array }, [string, number]>(
        "select public_key from verified_identities where name = ? and device_id = ?",
      )
      .get(userId, deviceId);
    return row !== null && PublicKey.deserialize(bytes(row.public_key)).equals(key);
  }

  /**
   * Records the keys now held for the devices of `userId` as verified, and clears their change
   * warnings: every device's, or with `only`, those of the devices it lists whose key held is
   * still the one given (what the user compared). With `only`, a device held but not among them
   * whose key is not the verified one is recorded as a change (`changedDevices`, listeners told),
   * as `saveIdentity` records a device new to a verified user: the user now vouches for this
   * user, and that device's key was never compared.
   */
  markVerified(userId: string, only?: readonly { deviceId: number; publicKey: PublicKey }[]): void {
    const db = this.store.db;
    const held = this.identitiesOf(userId);
    const compared = (h: { deviceId: number; publicKey: PublicKey }) =>
      !only || only.some((o) => o.deviceId === h.deviceId && o.publicKey.equals(h.publicKey));
    const chosen = held.filter(compared);
    const unseen = held.filter((h) => !compared(h) && !this.isVerified(userId, h.deviceId, h.publicKey));
    db.transaction(() => {
      for (const { deviceId, publicKey } of chosen) {
        db.query(
          `insert into verified_identities (name, device_id, public_key) values (?, ?, ?)
           on conflict (name, device_id) do update set public_key = excluded.public_key`,
        ).run(userId, deviceId, publicKey.serialize());
        db.query("delete from identity_changes where name = ? and device_id = ?").run(userId, deviceId);
      }
      for (const { deviceId } of unseen) {
        db.query(
          `insert into identity_changes (name, device_id, changed_at) values (?, ?, ?)
           on conflict (name, device_id) do nothing`,
        ).run(userId, deviceId, Date.now());
      }
    })();
    for (const { deviceId } of unseen)
      for (const listener of this.changeListeners) listener(userId, deviceId);
  }

  /** TOFU: a device that re-keyed is trusted again; `saveIdentity` reports the change. */
  async isTrustedIdentity(_name: ProtocolAddress, _key: PublicKey, _direction: Direction): Promise<boolean> {
    return true;
  }

  async getIdentity(name: ProtocolAddress): Promise<PublicKey | null> {
    const row = this.store.db
      .query<{ public_key: Uint8Array }, [string, number]>(
        "select public_key from identities where name = ? and device_id = ?",
      )
      .get(name.name(), name.deviceId());
    return row ? PublicKey.deserialize(bytes(row.public_key)) : null;
  }
}

export class SqliteSessionStore extends SessionStore {
  constructor(private readonly db: Database) {
    super();
  }

  async saveSession(name: ProtocolAddress, record: SessionRecord): Promise<void> {
    this.db
      .query(
        `insert into sessions (name, device_id, record) values (?, ?, ?)
         on conflict (name, device_id) do update set record = excluded.record`,
      )
      .run(name.name(), name.deviceId(), record.serialize());
  }

  async getSession(name: ProtocolAddress): Promise<SessionRecord | null> {
    const row = this.db
      .query<{ record: Uint8Array }, [string, number]>(
        "select record from sessions where name = ? and device_id = ?",
      )
      .get(name.name(), name.deviceId());
    return row ? SessionRecord.deserialize(bytes(row.record)) : null;
  }

  async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    const records: SessionRecord[] = [];
    for (const address of addresses) {
      const record = await this.getSession(address);
      if (!record) throw new Error(`no session for ${address.toString()}`);
      records.push(record);
    }
    return records;
  }

  /** Device ids of `name` we hold a session with. */
  deviceIds(name: string): number[] {
    return this.db
      .query<{ device_id: number }, [string]>(
        "select device_id from sessions where name = ? order by device_id",
      )
      .all(name)
      .map((r) => r.device_id);
  }

  remove(name: string, deviceId: number): void {
    this.db.query("delete from sessions where name = ? and device_id = ?").run(name, deviceId);
  }
}

export class SqlitePreKeyStore extends PreKeyStore {
  constructor(private readonly db: Database) {
    super();
  }

  async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    this.db.query("insert or replace into pre_keys (id, record) values (?, ?)").run(id, record.serialize());
  }

  async getPreKey(id: number): Promise<PreKeyRecord> {
    const row = this.db
      .query<{ record: Uint8Array }, [number]>("select record from pre_keys where id = ?")
      .get(id);
    if (!row) throw new Error(`no prekey ${id}`);
    return PreKeyRecord.deserialize(bytes(row.record));
  }

  async removePreKey(id: number): Promise<void> {
    this.db.query("delete from pre_keys where id = ?").run(id);
  }
}

export class SqliteSignedPreKeyStore extends SignedPreKeyStore {
  constructor(private readonly db: Database) {
    super();
  }

  async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    this.db
      .query("insert or replace into signed_pre_keys (id, record) values (?, ?)")
      .run(id, record.serialize());
  }

  async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    const row = this.db
      .query<{ record: Uint8Array }, [number]>("select record from signed_pre_keys where id = ?")
      .get(id);
    if (!row) throw new Error(`no signed prekey ${id}`);
    return SignedPreKeyRecord.deserialize(bytes(row.record));
  }
}

export class SqliteKyberPreKeyStore extends KyberPreKeyStore {
  constructor(private readonly db: Database) {
    super();
  }

  async saveKyberPreKey(id: number, record: KyberPreKeyRecord, lastResort = false): Promise<void> {
    this.db
      .query("insert or replace into kyber_pre_keys (id, record, last_resort) values (?, ?, ?)")
      .run(id, record.serialize(), lastResort ? 1 : 0);
  }

  async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    const row = this.db
      .query<{ record: Uint8Array }, [number]>("select record from kyber_pre_keys where id = ?")
      .get(id);
    if (!row) throw new Error(`no kyber prekey ${id}`);
    return KyberPreKeyRecord.deserialize(bytes(row.record));
  }

  /** One-time keys are deleted; a last-resort key may be reused, but never twice with the same base key. */
  async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: PublicKey): Promise<void> {
    const row = this.db
      .query<{ last_resort: number }, [number]>("select last_resort from kyber_pre_keys where id = ?")
      .get(id);
    if (!row) return;
    if (!row.last_resort) {
      this.db.query("delete from kyber_pre_keys where id = ?").run(id);
      return;
    }
    const inserted = this.db
      .query("insert or ignore into kyber_last_resort_uses (kyber_id, signed_id, base_key) values (?, ?, ?)")
      .run(id, signedPreKeyId, baseKey.serialize());
    if (inserted.changes === 0)
      throw new Error(`kyber last-resort key ${id} replayed with the same base key`);
  }
}

export class SqliteSenderKeyStore extends SenderKeyStore {
  constructor(private readonly db: Database) {
    super();
  }

  async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
    this.db
      .query(
        `insert into sender_keys (name, device_id, distribution_id, record) values (?, ?, ?, ?)
         on conflict (name, device_id, distribution_id) do update set record = excluded.record`,
      )
      .run(sender.name(), sender.deviceId(), distributionId, record.serialize());
  }

  async getSenderKey(sender: ProtocolAddress, distributionId: Uuid): Promise<SenderKeyRecord | null> {
    const row = this.db
      .query<{ record: Uint8Array }, [string, number, string]>(
        "select record from sender_keys where name = ? and device_id = ? and distribution_id = ?",
      )
      .get(sender.name(), sender.deviceId(), distributionId);
    return row ? SenderKeyRecord.deserialize(bytes(row.record)) : null;
  }
}
