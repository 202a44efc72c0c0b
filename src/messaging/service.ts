import { and, eq } from "drizzle-orm";
import {
  type ActorRefs,
  type EnvelopeRef,
  FixedDeadlines,
  type GroupSendResult,
  groupKey,
  MailboxFullError,
  userKey,
} from "../../actors/index.ts";
import type { Db } from "../db/index.ts";
import { accounts, blocks, devices } from "../db/schema.ts";
import { ErasureFence } from "../fence/index.ts";
import { stamp } from "../observability/stage-trace.ts";
import type { AcceptedFrame, DirectSend, GroupSend, RejectedFrame } from "../protocol/index.ts";
import type { Principal } from "../sessions/service.ts";
import type { StoredEnvelope } from "./envelope.ts";
import type { EnvelopeLog } from "./envelope-log.ts";
import { decodedLength, type StorageQuota } from "./storage-quota.ts";

/** What the sender hears about one send (docs/PROTOCOL.md, `accepted` / `rejected`). */
export type SendOutcome = AcceptedFrame | RejectedFrame;

/** A send whose checks are done and whose envelopes are queued for the next group commit. */
export interface SubmittedSend {
  /** Settles once the envelopes are durable (or the send was refused). */
  outcome: Promise<SendOutcome>;
}

/** A cached device list is used as is this long... */
const DEVICE_LIST_FRESH_MS = 500;
/** ...and until this age it is still used while a re-read runs in the background; older, a send waits for the read. */
const DEVICE_LIST_TTL_MS = 1000;
/** Cached device lists at most (users sent to within the last second, in practice). */
const DEVICE_LIST_CACHE_SIZE = 50_000;
/** Blocks of a recipient cached as a list at most; a longer list is asked per sender. */
const BLOCKS_CACHED = 64;
/** How long a recipient's cached block list is used before it is read again (ms). */
const BLOCK_LIST_TTL_MS = 5000;
/**
 * How long a node whose list-change channel is live (src/messaging/list-changes.ts) keeps a cached
 * device or block list without a re-read (ms): a change whose publication was lost (the changing
 * node could not reach Redis while this one could) is seen within this long. Device lists are
 * re-read in the background from half of it, so no send waits for that read.
 */
export const LISTS_KEPT_MS = 10_000;

/**
 * How long a user's device change is remembered for the 1:1 sends under way (`deviceChangeSeqs`):
 * far beyond a send's deadline (SEND_DEADLINE_MS, 10 s), so only an append that hung for longer
 * could commit a row for a device removed meanwhile and not see it.
 */
const DEVICE_CHANGES_KEPT_MS = 120_000;

/** Flow control of one node's sends (docs/MESSAGING.md, "Flow control"). */
export interface FlowControl {
  /**
   * Sends this node may have handed to actors without hearing back (1:1 delivers to user actors,
   * group sends to group actors); past it, new sends are `rejected busy` before anything is stored.
   */
  window: number;
  /** What a `busy` reply tells the sender to wait before sending the same frame again (ms). */
  retryAfterMs: number;
  /**
   * How long `accepted` waits for the recipient's actor to take a deliver; past it the sender hears
   * `accepted` all the same (it is durable), while the hand-over still counts against `window` (ms).
   */
  acceptWaitMs: number;
  /** How long a hand-over is waited for at all before the log is left to recover it (ms). */
  handOverTimeoutMs: number;
}

export const DEFAULT_FLOW_CONTROL: FlowControl = {
  window: 4096,
  retryAfterMs: 25,
  acceptWaitMs: 1000,
  handOverTimeoutMs: 10_000,
};

/** Where group sends are counted in `unsettled`: any of them may be fanning out to a fenced member. */
const GROUP_SENDS = "*group*";

/**
 * Whether two of a send's messages name the same device. Checked on every 1:1 send: a pairwise
 * scan for the few messages a send has (one per recipient device), a Set only for many.
 */
function hasRepeatedDevice(messages: readonly { deviceId: number }[]): boolean {
  const n = messages.length;
  if (n > 16) return new Set(messages.map((m) => m.deviceId)).size !== n;
  for (let i = 1; i < n; i++) {
    const id = (messages[i] as { deviceId: number }).deviceId;
    for (let j = 0; j < i; j++) if ((messages[j] as { deviceId: number }).deviceId === id) return true;
  }
  return false;
}

/**
 * Whether `messages` (distinct device ids, see {@link hasRepeatedDevice}) name exactly the devices
 * of `current` less `skipped` (the sending device, on a send to one's own other devices), without
 * building the sets a mismatch report needs. Device ids in `current` are distinct (a primary key).
 */
function namesExactly(
  messages: readonly { deviceId: number }[],
  current: readonly number[],
  skipped: number | undefined,
): boolean {
  let expected = current.length;
  if (skipped !== undefined && current.includes(skipped)) expected--;
  if (messages.length !== expected) return false;
  // A scan for the few devices a user has, a Set for many (the check stays linear).
  const has = current.length > 16 ? new Set(current) : undefined;
  for (const { deviceId } of messages) {
    if (deviceId === skipped || !(has ? has.has(deviceId) : current.includes(deviceId))) return false;
  }
  return true;
}

/** Tries of a deliver refused by a full local mailbox, 10 ms apart, before leaving it to the log. */
const MAILBOX_FULL_TRIES = 100;

/**
 * Sends, acks and device connections, between the gateway and the actors. A 1:1 envelope is
 * appended to the durable log (group commit), then handed to the recipient's user actor, and its
 * sender hears `accepted` once that actor has taken it: a sender whose recipients' actors, the
 * transport between nodes or the offline flushes fall behind is slowed by its own window of
 * unanswered sends, and past this node's window it is told `busy` (nothing stored) instead of the
 * delivery lag growing without bound.
 */
export class MessagingService {
  /** Sends handed to actors and not yet answered (the flow-control gauge). */
  private inFlight = 0;
  /** Sends refused `busy` since start (metrics). */
  busyReplies = 0;
  /**
   * userId → device ids (undefined: no such user), read at `at`, oldest first. Bounded: past
   * DEVICE_LIST_CACHE_SIZE the oldest lists go (sends to random ids fill it with `undefined`s that
   * would otherwise push out every live list at once).
   */
  private readonly deviceLists = new Map<string, { devices: number[] | undefined; at: number }>();
  /** Device-list reads in flight, so a user's concurrent sends share one query. */
  private readonly readingDevices = new Map<string, Promise<number[] | undefined>>();
  /**
   * userId → the users they block (undefined: more than BLOCKS_CACHED, asked per sender), read at
   * `at`, oldest first; bounded like the device lists.
   */
  private readonly blockLists = new Map<string, { blocked: ReadonlySet<string> | undefined; at: number }>();
  /** Bumped by every device change here: a read that started before one is not cached. */
  private deviceChanges = 0;
  /**
   * userId → `deviceChanges` right after that user's latest device change here (added, removed, or
   * told by another node), for changes of the last DEVICE_CHANGES_KEPT_MS, oldest first: a 1:1 send
   * whose append committed after a change of its recipient's devices checks what it stored
   * (`dropRemovedDevices`). `allDevicesChanged`: the same for `forgetLists`, which names nobody.
   */
  private readonly deviceChangeSeqs = new Map<string, { seq: number; at: number }>();
  private allDevicesChanged = 0;
  /**
   * `recipient|sender` → whether the recipient blocks the sender, for recipients who block more
   * than BLOCKS_CACHED users (their lists are not cached), read at `at`, oldest first; bounded like
   * the device lists, and as fresh.
   */
  private readonly blockVerdicts = new Map<string, { blocked: boolean; at: number }>();
  /** Block-list reads in flight, so concurrent sends to one recipient share one query. */
  private readonly readingBlocks = new Map<
    string,
    Promise<{ blocked: ReadonlySet<string> | undefined; at: number }>
  >();
  /** Bumped by every block change here: a read that started before one is not cached. */
  private blockChanges = 0;
  /**
   * Sends past their checks and not yet settled, by user (sender and 1:1 recipient; group sends
   * under GROUP_SENDS): the erasure fence waits for a user's before anything is swept.
   */
  private readonly unsettled = new Map<string, Set<Promise<unknown>>>();
  /** `accepted`'s wait for the recipient's actor (FlowControl.acceptWaitMs), one timer for all. */
  private readonly acceptWaits: FixedDeadlines;

  /**
   * `keptFor`: how long a cached device or block list may be used now without a re-read (ms), for
   * as long as every change to devices and blocks reaches `devicesChanged` / `blocksChanged`:
   * Infinity on the embedded node (PGlite lives in this process and no other node can write it),
   * LISTS_KEPT_MS on a shared database while the list-change channel is live, 0 otherwise (lists
   * are then re-read on the TTLs above to catch another node's changes). Read at every use.
   * `quota`: the per-account budget of stored ciphertext bytes (none: unbounded, for tests of
   * other things).
   */
  constructor(
    private readonly db: Db,
    private readonly log: EnvelopeLog,
    private readonly actors: ActorRefs,
    private readonly now: () => number = Date.now,
    private readonly flow: FlowControl = DEFAULT_FLOW_CONTROL,
    private readonly erasing: ErasureFence = new ErasureFence(),
    private readonly keptFor: () => number = () => 0,
    private readonly quota?: StorageQuota,
  ) {
    this.acceptWaits = new FixedDeadlines(flow.acceptWaitMs);
  }

  /** Counts `work` as unsettled for each user until it settles. */
  private track<T>(users: readonly string[], work: Promise<T>): Promise<T> {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    for (const user of users) {
      let set = this.unsettled.get(user);
      if (!set) {
        set = new Set();
        this.unsettled.set(user, set);
      }
      set.add(settled);
    }
    void settled.then(() => {
      for (const user of users) {
        const set = this.unsettled.get(user);
        set?.delete(settled);
        if (set?.size === 0) this.unsettled.delete(user);
      }
    });
    return work;
  }

  /**
   * The erasure fence on this node, once the user is in `ErasureFence`: forgets their cached device
   * list, then resolves when every send to or from them (and every group send) that passed its
   * checks before the fence has settled, so nothing of theirs reaches the log after this.
   */
  async fenced(userId: string): Promise<void> {
    this.devicesChanged(userId);
    this.blockLists.delete(userId);
    for (;;) {
      const pending = [...(this.unsettled.get(userId) ?? []), ...(this.unsettled.get(GROUP_SENDS) ?? [])];
      if (pending.length === 0) return;
      await Promise.all(pending);
    }
  }

  /** Sends handed to actors whose answer this node still waits for. */
  get sendsInFlight(): number {
    return this.inFlight;
  }

  private busy(id: string): SendOutcome {
    this.busyReplies++;
    return { type: "rejected", id, code: "busy", retryAfterMs: this.flow.retryAfterMs };
  }

  /**
   * Hands durable envelopes to the recipient's user actor; resolves once it took them, or after
   * `acceptWaitMs` (a ring change or a busy machine must not hold `accepted` for seconds), while the
   * hand-over counts in the window until it settles. Any failure leaves them in the log, which a
   * new activation reads.
   */
  private handOver(userId: string, envelopes: StoredEnvelope[]): Promise<void> {
    this.inFlight++;
    const taken = this.deliver(userId, envelopes);
    return new Promise<void>((resolve) => {
      const waited = this.acceptWaits.add(resolve);
      const done = () => {
        this.inFlight--;
        waited.cancel();
        resolve();
      };
      taken.then(done, done);
    });
  }

  /** One hand-over: the ask, tried again while a local mailbox is full; failures are left to the log. */
  private async deliver(userId: string, envelopes: StoredEnvelope[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.actors.ask(
          userKey(userId),
          { type: "deliver", envelopes },
          { timeoutMs: this.flow.handOverTimeoutMs },
        );
        return;
      } catch (error) {
        // A full local mailbox is the actor falling behind: wait for it (the sender waits too).
        if (!(error instanceof MailboxFullError) || attempt >= MAILBOX_FULL_TRIES) return;
        await Bun.sleep(10);
      }
    }
  }

  /** Forgets a user's cached device list (a device of theirs was added or removed, here or on another node). */
  devicesChanged(userId: string): void {
    this.deviceLists.delete(userId);
    this.readingDevices.delete(userId);
    this.deviceChanges++;
    const now = this.now();
    this.deviceChangeSeqs.delete(userId);
    this.deviceChangeSeqs.set(userId, { seq: this.deviceChanges, at: now });
    for (const [id, change] of this.deviceChangeSeqs) {
      if (now - change.at < DEVICE_CHANGES_KEPT_MS) break;
      this.deviceChangeSeqs.delete(id);
    }
  }

  /**
   * A count of the device changes this node has heard of (`devicesChanged`, `forgetLists`): read
   * before a send's recipients are, it tells afterwards whether one of theirs may have changed
   * since (`devicesChangedSince`).
   */
  get deviceChangeSeq(): number {
    return this.deviceChanges;
  }

  /**
   * True when `userId`'s devices may have changed here since `deviceChangeSeq` was `seq` (a change
   * of the last DEVICE_CHANGES_KEPT_MS; `forgetLists` counts as a change of everyone's).
   */
  devicesChangedSince(userId: string, seq: number): boolean {
    if (this.deviceChanges === seq) return false;
    return this.allDevicesChanged > seq || (this.deviceChangeSeqs.get(userId)?.seq ?? 0) > seq;
  }

  /**
   * Of a 1:1 send's envelopes just stored, those for devices of the recipient that still exist; the
   * others' rows are erased again from the log. A send checks the recipient's devices before its
   * append, and a device removed in between (`DeviceService.remove`: its follow-up erases the
   * device's rows, `eraseDevice`) would otherwise keep the ciphertext of a commit that came after
   * that erasure in the log, handed to the next device given its id. Called only when the
   * recipient's devices changed since the check (`devicesChangedSince`). A removal on this node
   * tells it (`devicesChanged`) before it erases, so either its erasure comes after this commit or
   * this sees the change. One on another node publishes the change on the list-change channel
   * and waits for every live node's acknowledgement (this node applied it) before it erases: a
   * send here that committed after that erasure sees the change. One while the channel is down,
   * or on a node the publisher did not wait for (started within the last heartbeat, or slower to
   * acknowledge than the publisher's 1 s wait), can still miss it (then the row stays until
   * retention).
   */
  private async dropRemovedDevices(userId: string, stored: StoredEnvelope[]): Promise<StoredEnvelope[]> {
    const current = await this.devicesOf(userId);
    // No such user any more: its erasure sweeps the log.
    if (current === undefined) return stored;
    const gone = [...new Set(stored.map((e) => e.recipientDevice))].filter((d) => !current.includes(d));
    if (gone.length === 0) return stored;
    for (const deviceId of gone) await this.log.eraseDevice(userId, deviceId);
    return stored.filter((e) => !gone.includes(e.recipientDevice));
  }

  /**
   * Forgets every cached device and block list (changes may have been missed: the list-change
   * channel was away); reads in flight are not cached either.
   */
  forgetLists(): void {
    this.deviceLists.clear();
    this.readingDevices.clear();
    this.blockLists.clear();
    this.readingBlocks.clear();
    this.blockVerdicts.clear();
    this.deviceChanges++;
    this.allDevicesChanged = this.deviceChanges;
    this.blockChanges++;
  }

  /** A block was added or lifted (on this node, or told by another): forget what is cached of the blocker's blocks. */
  blocksChanged(blocker: string, blocked: string): void {
    this.blockLists.delete(blocker);
    this.readingBlocks.delete(blocker);
    this.blockVerdicts.delete(`${blocker}|${blocked}`);
    this.blockChanges++;
  }

  /**
   * Whether `recipient` blocks `sender` (a long block list): cached for at most DEVICE_LIST_FRESH_MS,
   * or `keptFor` when longer.
   */
  private async blocks(recipient: string, sender: string): Promise<boolean> {
    const key = `${recipient}|${sender}`;
    const cached = this.blockVerdicts.get(key);
    const now = this.now();
    if (cached && !this.stale(now - cached.at, DEVICE_LIST_FRESH_MS)) return cached.blocked;
    const changesBefore = this.blockChanges;
    const rows = await this.db
      .select({ userId: blocks.userId })
      .from(blocks)
      .where(and(eq(blocks.userId, recipient), eq(blocks.blockedUserId, sender)));
    const blocked = rows.length > 0;
    if (this.blockChanges === changesBefore) {
      this.blockVerdicts.delete(key);
      this.blockVerdicts.set(key, { blocked, at: now });
      if (this.blockVerdicts.size > DEVICE_LIST_CACHE_SIZE) {
        for (const [k, v] of this.blockVerdicts) {
          if (
            this.blockVerdicts.size <= DEVICE_LIST_CACHE_SIZE &&
            !this.stale(now - v.at, DEVICE_LIST_FRESH_MS)
          )
            break;
          this.blockVerdicts.delete(k);
        }
      }
    }
    return blocked;
  }

  /**
   * Whether a cached entry `age` ms old is past `limit`, or past `keptFor` when that is longer
   * (every change then drops its entry, `devicesChanged` / `blocksChanged`).
   */
  private stale(age: number, limit: number): boolean {
    return age >= Math.max(limit, this.keptFor());
  }

  /**
   * The recipient's current device ids, or undefined when there is no such user. Changes on this
   * node, and on others while the list-change channel is live, are seen at once. Otherwise cached
   * for at most a second: a device added on another node may be missed for that long (the sender
   * then learns of it with its next send's `mismatched_devices`). Past
   * half a second the list is re-read in the background while sends go on using it: a send that
   * waited for the re-read was most of the 1:1 p99 at a fixed 8,500/s (76 ms accepted; 35 ms with
   * the lists never re-read). While `keptFor` is longer (every change reaches this node), a user's
   * list is kept until a change drops it or for `keptFor`, re-read in the background from half of
   * it; "no such user" is still re-read after a second, as account creation does not tell this cache.
   */
  private async devicesOf(userId: string): Promise<number[] | undefined> {
    const cached = this.deviceLists.get(userId);
    const age = cached ? this.now() - cached.at : Number.POSITIVE_INFINITY;
    if (cached?.devices !== undefined) {
      const kept = this.keptFor();
      if (age < kept) {
        if (age >= kept / 2) void this.rereadDevices(userId).catch(() => {});
        return cached.devices;
      }
    }
    if (cached && age < DEVICE_LIST_FRESH_MS) return cached.devices;
    if (cached && age < DEVICE_LIST_TTL_MS) {
      void this.rereadDevices(userId).catch(() => {});
      return cached.devices;
    }
    return this.rereadDevices(userId);
  }

  private rereadDevices(userId: string): Promise<number[] | undefined> {
    let reading = this.readingDevices.get(userId);
    if (!reading) {
      const changesBefore = this.deviceChanges;
      const read: Promise<number[] | undefined> = this.readDevices(userId)
        .then((devices) => {
          if (this.deviceChanges === changesBefore) this.rememberDevices(userId, devices);
          return devices;
        })
        .finally(() => {
          if (this.readingDevices.get(userId) === read) this.readingDevices.delete(userId);
        });
      this.readingDevices.set(userId, read);
      reading = read;
    }
    return reading;
  }

  /** Caches a list, keeping the map in order of age, and drops the stale and the oldest beyond the bound. */
  private rememberDevices(userId: string, devices: number[] | undefined): void {
    const now = this.now();
    this.deviceLists.delete(userId);
    this.deviceLists.set(userId, { devices, at: now });
    if (this.deviceLists.size <= DEVICE_LIST_CACHE_SIZE) return;
    for (const [id, cached] of this.deviceLists) {
      const kept =
        cached.devices !== undefined
          ? !this.stale(now - cached.at, DEVICE_LIST_TTL_MS)
          : now - cached.at < DEVICE_LIST_TTL_MS;
      if (this.deviceLists.size <= DEVICE_LIST_CACHE_SIZE && kept) break;
      this.deviceLists.delete(id);
    }
  }

  private async readDevices(userId: string): Promise<number[] | undefined> {
    const rows = await this.db
      .select({ deviceId: devices.deviceId })
      .from(devices)
      .where(eq(devices.userId, userId));
    if (rows.length > 0) return rows.map((r) => r.deviceId);
    const [account] = await this.db.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId));
    return account ? [] : undefined;
  }

  /**
   * Whether `recipient` blocks `sender`. The recipient's block list (up to BLOCKS_CACHED users) is
   * cached for BLOCK_LIST_TTL_MS (or `keptFor` when longer, dropped by a block change): a 1:1 send
   * reads nothing more than its device list, and blocks change rarely (a block made on this node is
   * seen at once; on another at once through the list-change channel, within BLOCK_LIST_TTL_MS while
   * that is down). A longer list is asked per (recipient, sender) pair, cached like a device list.
   */
  private async isBlocked(recipient: string, sender: string): Promise<boolean> {
    if (recipient === sender) return false;
    const cached = this.blockLists.get(recipient);
    const list =
      cached && !this.stale(this.now() - cached.at, BLOCK_LIST_TTL_MS)
        ? cached
        : await this.readBlockList(recipient);
    if (list.blocked) return list.blocked.has(sender);
    return this.blocks(recipient, sender);
  }

  /**
   * Reads (and caches) a recipient's block list. Concurrent sends to the same recipient share one
   * query: a burst to many cold recipients, and the senders' retries of sends that timed out
   * meanwhile, otherwise queue one read per send for the same list behind each other.
   */
  private readBlockList(
    recipient: string,
  ): Promise<{ blocked: ReadonlySet<string> | undefined; at: number }> {
    const inFlight = this.readingBlocks.get(recipient);
    if (inFlight) return inFlight;
    const changesBefore = this.blockChanges;
    const startedAt = this.now();
    const read = (async () => {
      const rows = await this.db
        .select({ userId: blocks.blockedUserId })
        .from(blocks)
        .where(eq(blocks.userId, recipient))
        .limit(BLOCKS_CACHED + 1);
      const now = this.now();
      const list = {
        blocked: rows.length > BLOCKS_CACHED ? undefined : new Set(rows.map((r) => r.userId)),
        at: startedAt,
      };
      if (this.blockChanges === changesBefore) {
        this.blockLists.delete(recipient);
        this.blockLists.set(recipient, list);
        if (this.blockLists.size > DEVICE_LIST_CACHE_SIZE) {
          for (const [id, entry] of this.blockLists) {
            if (
              this.blockLists.size <= DEVICE_LIST_CACHE_SIZE &&
              !this.stale(now - entry.at, BLOCK_LIST_TTL_MS)
            )
              break;
            this.blockLists.delete(id);
          }
        }
      }
      return list;
    })().finally(() => {
      if (this.readingBlocks.get(recipient) === read) this.readingBlocks.delete(recipient);
    });
    this.readingBlocks.set(recipient, read);
    return read;
  }

  /**
   * Checks a 1:1 send (the device list must name exactly the recipient's devices, less the sending
   * one; a recipient who blocks the sender gets nothing, and the sender hears `accepted`) and queues
   * its envelopes for the next group commit, resolving as soon as they are queued: a device's next send can be checked while this one commits. Commits happen in
   * submission order, so `accepted` and the hand-off to the actor keep the order of the sends.
   */
  async submitDirect(from: Principal, frame: DirectSend): Promise<SubmittedSend> {
    const reject = (rejection: Omit<Extract<SendOutcome, { type: "rejected" }>, "type" | "id">) => ({
      outcome: Promise.resolve<SendOutcome>({ type: "rejected", id: frame.id, ...rejection }),
    });
    if (hasRepeatedDevice(frame.messages)) return reject({ code: "invalid" });
    // Being erased, either side: as if the recipient did not exist (the sender's sockets are closing).
    if (this.erasing.has(frame.to.user) || this.erasing.has(from.userId))
      return reject({ code: "unknown_recipient" });
    // Before the list is read: a change of the recipient's devices from here on is seen after the append.
    const devicesAt = this.deviceChanges;
    const current = await this.devicesOf(frame.to.user);
    if (current === undefined) return reject({ code: "unknown_recipient" });
    const skipped = frame.to.user === from.userId ? from.deviceId : undefined;
    if (!namesExactly(frame.messages, current, skipped)) {
      const named = frame.messages.map((m) => m.deviceId);
      const expected = new Set(skipped === undefined ? current : current.filter((d) => d !== skipped));
      const missing = [...expected].filter((d) => !named.includes(d)).sort((a, b) => a - b);
      const extra = named.filter((d) => !expected.has(d)).sort((a, b) => a - b);
      return reject({ code: "mismatched_devices", missing, extra });
    }
    if (this.inFlight >= this.flow.window) return { outcome: Promise.resolve(this.busy(frame.id)) };
    const ts = this.now();
    // A recipient who blocks the sender: answered as any send (Signal's server cannot tell either;
    // the blocker's client drops it there), stored nowhere, delivered to nobody (docs/PROTOCOL.md, Blocks).
    if (await this.isBlocked(frame.to.user, from.userId))
      return { outcome: Promise.resolve<SendOutcome>({ type: "accepted", id: frame.id, ts }) };
    // The sender's storage quota, last of the checks: only a send that will be stored spends it.
    // `bytes`: what the quota counted (0 if it let the send through uncounted), all a refund may give back.
    let bytes = 0;
    if (this.quota) {
      let size = 0;
      for (const m of frame.messages) size += decodedLength(m.body);
      // Synchronous while the node's lease covers it; past it, the shared counter is asked.
      let charged = this.quota.charge(from.userId, size);
      if (charged instanceof Promise) charged = await charged;
      if (!charged.allowed) return reject({ code: "rate_limited", retryAfterMs: charged.retryAfterMs });
      bytes = charged.charged;
    }
    // Again after the last await: from here to `track` nothing yields, so the fence either refused
    // this send or waits for it.
    if (this.erasing.has(frame.to.user) || this.erasing.has(from.userId)) {
      void this.quota?.refund(from.userId, bytes);
      return reject({ code: "unknown_recipient" });
    }
    const envelopes: StoredEnvelope[] = frame.messages.map((m) => ({
      id: frame.id,
      senderUser: from.userId,
      senderDevice: from.deviceId,
      recipientUser: frame.to.user,
      recipientDevice: m.deviceId,
      groupId: null,
      ts,
      type: m.type,
      body: m.body,
    }));
    stamp(frame.id, "queued");
    const outcome = this.track([from.userId, frame.to.user], this.log.append(envelopes)).then(
      async (fresh): Promise<SendOutcome> => {
        stamp(frame.id, "commit");
        let toDeliver = fresh.every(Boolean) ? envelopes : envelopes.filter((_, i) => fresh[i]);
        // A recipient device removed since the check: what was stored for it goes again.
        if (toDeliver.length > 0 && this.devicesChangedSince(frame.to.user, devicesAt))
          toDeliver = await this.dropRemovedDevices(frame.to.user, toDeliver);
        // What is not kept goes back to the quota: a re-sent id's bodies (stored nothing new), and
        // those stored for a device removed meanwhile and erased again (`dropRemovedDevices`).
        if (bytes > 0 && toDeliver.length < envelopes.length) {
          const kept = new Set(toDeliver);
          const unkept = envelopes.reduce((sum, e) => (kept.has(e) ? sum : sum + decodedLength(e.body)), 0);
          void this.quota?.refund(from.userId, Math.min(unkept, bytes));
        }
        // Durable now: a failure to reach the actor is recovered from the log, so it does not un-accept.
        // Handed over in commit order (the ask leaves before any await), so per-sender order holds.
        if (toDeliver.length > 0) await this.handOver(frame.to.user, toDeliver);
        return { type: "accepted", id: frame.id, ts };
      },
      (error: unknown) => {
        // Not stored: the sender sends it again, and is not charged twice.
        void this.quota?.refund(from.userId, bytes);
        throw error;
      },
    );
    return { outcome };
  }

  /**
   * A group send: the group's actor authorises the sender, charges the sender's storage quota
   * (the body once per recipient device: each device's row holds it until acked; refunded for what
   * is not stored) and fans the ciphertext out. Past the quota, `rejected rate_limited` with
   * `retryAfterMs`, nothing stored.
   */
  async sendGroup(from: Principal, frame: GroupSend): Promise<SendOutcome> {
    if (this.erasing.has(from.userId)) return { type: "rejected", id: frame.id, code: "not_member" };
    if (this.inFlight >= this.flow.window) return this.busy(frame.id);
    this.inFlight++;
    let reply: GroupSendResult;
    try {
      reply = await this.track(
        [from.userId, GROUP_SENDS],
        this.actors.ask<GroupSendResult>(groupKey(frame.to.group), {
          type: "send",
          id: frame.id,
          from: { user: from.userId, device: from.deviceId },
          ciphertext: frame.message,
        }),
      );
    } catch (error) {
      // The group's actor is behind (its mailbox is full): nothing was stored, the sender may retry.
      if (error instanceof MailboxFullError) return this.busy(frame.id);
      throw error;
    } finally {
      this.inFlight--;
    }
    if (!reply.ok) {
      if (reply.code === "rate_limited")
        return { type: "rejected", id: frame.id, code: "rate_limited", retryAfterMs: reply.retryAfterMs };
      return { type: "rejected", id: frame.id, code: reply.code };
    }
    return { type: "accepted", id: frame.id, ts: reply.ts };
  }

  /**
   * A device's socket opened on `gatewayNode`: its user actor holds live envelopes until it has
   * drained its queue. Resolves true when the actor already knew this very socket (it keeps
   * pushing to it), false when it learnt it now (the device must drain its queue, then `deviceDrained`).
   */
  async deviceConnected(device: Principal, gatewayNode: string, connectionId: string): Promise<boolean> {
    const reply = await this.actors.ask<{ known?: boolean }>(userKey(device.userId), {
      type: "device.connect",
      deviceId: device.deviceId,
      gatewayNode,
      connectionId,
      drainAgain: true,
    });
    return reply?.known === true;
  }

  /**
   * The device drained its offline queue: live delivery starts. Resolves true when the user actor
   * asks for the queue to be read once more first (envelopes went back to it meanwhile, given back
   * by a replaced socket's drain): the gateway reads it again and reports drained again.
   */
  async deviceDrained(device: Principal, gatewayNode: string, connectionId: string): Promise<boolean> {
    const reply = await this.actors.ask<{ again?: boolean }>(userKey(device.userId), {
      type: "device.drained",
      deviceId: device.deviceId,
      gatewayNode,
      connectionId,
      drainAgain: true,
    });
    return reply?.again === true;
  }

  /**
   * A push (or drain command) to the device's socket on another node was lost on its way (that
   * node's inbox adopted while it was taken for dead): the user actor handles it as a failed push
   * (`push.failed`: the socket is looked up again before its envelopes go to the offline queue).
   */
  async pushLost(device: Principal, connectionId: string): Promise<void> {
    await this.actors.tell(userKey(device.userId), {
      type: "push.failed",
      deviceId: device.deviceId,
      connectionId,
    });
  }

  /**
   * The device's socket on `gatewayNode` closed: what it has not acked goes to its offline queue.
   * `requeued`: envelopes its drain had taken from the offline queue and gave back when it ended
   * (the device's newer socket, if any, reads the queue again). `nodeGone`: told by a surviving
   * node for a socket whose node went away without telling (`Gateway.nodesGone`); its drain may
   * have held envelopes the broker gave back, how many is not known, and the newer socket reads
   * the queue again as for `requeued` > 0.
   */
  async deviceDisconnected(
    device: Principal,
    gatewayNode: string,
    connectionId: string,
    requeued = 0,
    nodeGone = false,
  ): Promise<void> {
    await this.actors.ask(userKey(device.userId), {
      type: "device.disconnect",
      deviceId: device.deviceId,
      gatewayNode,
      connectionId,
      requeued,
      ...(nodeGone ? { nodeGone } : {}),
    });
  }

  /**
   * The device drained its offline queue and acked all of it: its user actor removes the queue
   * (after a check of the log, between its flushes), so queues exist only while devices have a backlog.
   */
  async queueEmptied(device: Principal): Promise<void> {
    await this.actors.tell(userKey(device.userId), { type: "queue.emptied", deviceId: device.deviceId });
  }

  /** A device was removed from its account: its user actor forgets it and drops its offline queue. */
  async deviceRemoved(userId: string, deviceId: number): Promise<void> {
    this.devicesChanged(userId);
    await this.actors.ask(userKey(userId), { type: "device.removed", deviceId });
  }

  /**
   * Erasure's live step: the user's actor, wherever the ring placed it, closes every socket of the
   * user (4410) and stops.
   */
  async eraseUser(userId: string, erasureId: string): Promise<void> {
    this.quota?.forget(userId);
    await this.actors.ask(userKey(userId), { type: "erase", erasureId });
    await this.actors.stopActor(userKey(userId), "erased");
  }

  /**
   * The device has these envelopes (each named by id and sender device: ids are the senders' and
   * may repeat across senders): the log forgets their ciphertext and the actor stops redelivering.
   */
  async ack(device: Principal, envelopes: EnvelopeRef[]): Promise<void> {
    // The actor first: a reconnect that overtakes the log's commit must not be pushed these again.
    // Should the log's write then fail, they stay pending there and come back once (clients dedupe).
    const told = this.actors.tell(userKey(device.userId), {
      type: "ack",
      deviceId: device.deviceId,
      envelopes,
    });
    await Promise.all([this.log.ack(device.userId, device.deviceId, envelopes), told]);
  }
}
