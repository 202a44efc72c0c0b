import type { ActorBehavior, ActorContext } from "./actor.ts";
import { ActorError } from "./actor-error.ts";
import { userKey } from "./keys.ts";
import type {
  Clock,
  EnvelopeLog,
  GroupDirectory,
  GroupEnvelope,
  GroupMembersCache,
  StoredBytesQuota,
} from "./ports.ts";
import type { DeliverGroupMessage, EraseMessage } from "./user-actor.ts";

/** A group send: one sender-key ciphertext to fan out to every other member device. */
export interface GroupSendMessage {
  type: "send";
  id: string;
  from: { user: string; device: number };
  ciphertext: { type: number; body: string };
}

/** Everything a group actor handles. */
export type GroupMessage = GroupSendMessage | EraseMessage;

/** What `ask(groupKey(id), GroupSendMessage)` answers; `src/messaging` maps it to `accepted`/`rejected`. */
export type GroupSendResult =
  | { ok: true; ts: number; recipients: number }
  | { ok: false; code: "not_member" | "unknown_recipient" }
  | { ok: false; code: "rate_limited"; retryAfterMs: number };

/** Who one send goes to, derived from the members and the sending device (`GroupActor.fanOut`). */
interface FanOut {
  members: ReadonlyMap<string, readonly number[]>;
  user: string;
  device: number;
  devices: Record<string, number[]>;
  keys: string[];
  recipients: number;
}

/** Ports a group actor uses. */
export interface GroupActorPorts {
  directory: GroupDirectory;
  log: EnvelopeLog;
  clock: Clock;
  /** The senders' storage quota, charged per recipient device before a send is stored; none: not counted. */
  quota?: StoredBytesQuota;
}

/**
 * The actor of one group: authorises the sender, charges the sender's storage quota the body once
 * per recipient device (what the log's per-device rows hold), stores the send once in the log (group commit;
 * the per-device rows are written off this path) before answering, then fans out to the member user actors with `tellMany`, which sends
 * one transfer per owning node, not one per member. Sends of a group are serialised here, so
 * every member sees them in the order they were accepted.
 */
export class GroupActor implements ActorBehavior<GroupMessage, unknown> {
  /** The members as last read, kept for this activation; the directory checks it is current. */
  private readonly members: GroupMembersCache = { blockers: new Map() };
  /** What the previous send fanned out to, reused while the members and sending device are the same. */
  private lastFanOut: FanOut | undefined;

  constructor(
    readonly groupId: string,
    private readonly ports: GroupActorPorts,
  ) {}

  async receive(message: GroupMessage, ctx: ActorContext): Promise<unknown> {
    switch (message.type) {
      case "erase":
        ctx.stop("erased");
        return { erased: true };
      case "send":
        return this.send(message, ctx);
      default:
        throw new ActorError("invalid", "unknown group actor message");
    }
  }

  /**
   * Every member device but the sending one, per user (members with none, blockers or no device,
   * are left out), the member actors' keys and the device count. Derived again only when the
   * directory's answer (the same map while nothing changed) or the sending device differ from the
   * previous send's: a group of 10,000 otherwise rebuilds 10,000 entries per send. What it
   * returns is shared by the sends that reuse it and is never mutated (the log serialises it, the
   * member actors only read it).
   */
  private fanOut(members: ReadonlyMap<string, readonly number[]>, from: GroupSendMessage["from"]): FanOut {
    const last = this.lastFanOut;
    if (last?.members === members && last.user === from.user && last.device === from.device) return last;
    const devices: Record<string, number[]> = {};
    let recipients = 0;
    for (const [userId, list] of members) {
      const to = userId === from.user ? list.filter((deviceId) => deviceId !== from.device) : list;
      if (to.length === 0) continue;
      devices[userId] = [...to];
      recipients += to.length;
    }
    const keys = Object.keys(devices).map(userKey);
    this.lastFanOut = { members, user: from.user, device: from.device, devices, keys, recipients };
    return this.lastFanOut;
  }

  private async send(message: GroupSendMessage, ctx: ActorContext): Promise<GroupSendResult> {
    // Checked on every send (one version read; the members are read again only when they changed),
    // so a membership change needs no message to this actor. The device changes count first: a
    // device removed from here on is looked for once the send is stored.
    const { directory } = this.ports;
    const since = directory.changeSeq?.();
    const members = await directory.recipients(this.groupId, message.from.user, this.members);
    if (!members) return { ok: false, code: "unknown_recipient" };
    if (!members.has(message.from.user)) return { ok: false, code: "not_member" };
    const ts = this.ports.clock.now();
    const envelope: GroupEnvelope = {
      id: message.id,
      senderUser: message.from.user,
      senderDevice: message.from.device,
      groupId: this.groupId,
      ts,
      type: message.ciphertext.type,
      body: message.ciphertext.body,
    };
    const { devices, keys, recipients } = this.fanOut(members, message.from);
    if (recipients === 0) return { ok: true, ts, recipients };
    // The sender's storage quota, before anything is stored: every recipient device's row holds
    // the body until that device acks it, so the send costs the body once per recipient device.
    const { quota } = this.ports;
    const bodyBytes = quota ? quota.bodyBytes(message.ciphertext.body) : 0;
    let charged = 0;
    if (quota) {
      let decision = quota.charge(message.from.user, bodyBytes * recipients);
      if (decision instanceof Promise) decision = await decision;
      if (!decision.allowed) return { ok: false, code: "rate_limited", retryAfterMs: decision.retryAfterMs };
      charged = decision.charged;
    }
    const refund = (bytes: number) => {
      if (quota && bytes > 0) void quota.refund(message.from.user, Math.min(bytes, charged));
    };
    // One durable row for the whole send; its per-device rows are written off this path.
    let stored: boolean;
    try {
      stored = await this.ports.log.appendGroup(envelope, devices);
    } catch (error) {
      refund(charged);
      throw error;
    }
    // A re-sent id: its first copy stands and nothing new was stored.
    if (!stored) refund(charged);
    else {
      let to = devices;
      let toKeys = keys;
      // A member device removed since its members were read: what was stored for it goes again.
      if (since !== undefined && directory.keepExisting) {
        to = await directory.keepExisting(devices, since);
        if (to !== devices) {
          toKeys = Object.keys(to).map(userKey);
          const kept = Object.values(to).reduce((n, list) => n + list.length, 0);
          refund((recipients - kept) * bodyBytes);
        }
      }
      const deliver: DeliverGroupMessage = { type: "deliver.group", envelope, devices: to };
      // Durable already: a user actor that misses this rebuilds from the log when it next activates.
      await ctx.system.tellMany(toKeys, deliver).catch(() => {});
    }
    return { ok: true, ts, recipients };
  }
}

/** Factory to register as kind `group`. */
export function groupActorFactory(ports: GroupActorPorts): (id: string) => GroupActor {
  return (id) => new GroupActor(id, ports);
}
