import type { ActorBehavior, ActorContext } from "./actor.ts";
import { ActorError } from "./actor-error.ts";
import { userKey } from "./keys.ts";
import type { Clock, EnvelopeLog, GroupDirectory, GroupEnvelope, GroupMembersCache } from "./ports.ts";
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
  | { ok: false; code: "not_member" | "unknown_recipient" };

/** Ports a group actor uses. */
export interface GroupActorPorts {
  directory: GroupDirectory;
  log: EnvelopeLog;
  clock: Clock;
}

/**
 * The actor of one group: authorises the sender, stores the send once in the log (group commit;
 * the per-device rows are written off this path) before answering, then fans out to the member user actors with `tellMany`, which sends
 * one transfer per owning node, not one per member. Sends of a group are serialised here, so
 * every member sees them in the order they were accepted.
 */
export class GroupActor implements ActorBehavior<GroupMessage, unknown> {
  /** The members as last read, kept for this activation; the directory checks it is current. */
  private readonly members: GroupMembersCache = { blockers: new Map() };

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

  private async send(message: GroupSendMessage, ctx: ActorContext): Promise<GroupSendResult> {
    // Checked on every send (one version read; the members are read again only when they changed),
    // so a membership change needs no message to this actor.
    const members = await this.ports.directory.recipients(this.groupId, message.from.user, this.members);
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
    // Every member device but the sending one; members with none (blockers, no device) are left out.
    const devices: Record<string, number[]> = {};
    let recipients = 0;
    for (const [userId, list] of members) {
      const to =
        userId === message.from.user ? list.filter((deviceId) => deviceId !== message.from.device) : list;
      if (to.length === 0) continue;
      devices[userId] = [...to];
      recipients += to.length;
    }
    if (recipients === 0) return { ok: true, ts, recipients };
    // One durable row for the whole send; its per-device rows are written off this path.
    if (await this.ports.log.appendGroup(envelope, devices)) {
      const deliver: DeliverGroupMessage = { type: "deliver.group", envelope, devices };
      // Durable already: a user actor that misses this rebuilds from the log when it next activates.
      await ctx.system.tellMany(Object.keys(devices).map(userKey), deliver).catch(() => {});
    }
    return { ok: true, ts, recipients };
  }
}

/** Factory to register as kind `group`. */
export function groupActorFactory(ports: GroupActorPorts): (id: string) => GroupActor {
  return (id) => new GroupActor(id, ports);
}
