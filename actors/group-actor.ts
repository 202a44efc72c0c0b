import type { ActorBehavior, ActorContext } from "./actor.ts";
import { ActorError } from "./actor-error.ts";
import { userKey } from "./keys.ts";
import type { Clock, EnvelopeLog, GroupDirectory, StoredEnvelope } from "./ports.ts";
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
 * The actor of one group: authorises the sender, logs one envelope per member device (group
 * commit) before answering, then fans out to the member user actors with `tellMany`, which sends
 * one transfer per owning node, not one per member. Sends of a group are serialised here, so
 * every member sees them in the order they were accepted.
 */
export class GroupActor implements ActorBehavior<GroupMessage, unknown> {
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
    // Read on every send, so a membership change needs no message to this actor.
    const members = await this.ports.directory.recipients(this.groupId, message.from.user);
    if (!members) return { ok: false, code: "unknown_recipient" };
    if (!members.has(message.from.user)) return { ok: false, code: "not_member" };
    const ts = this.ports.clock.now();
    const template: DeliverGroupMessage["envelope"] = {
      id: message.id,
      senderUser: message.from.user,
      senderDevice: message.from.device,
      groupId: this.groupId,
      ts,
      type: message.ciphertext.type,
      body: message.ciphertext.body,
    };
    const envelopes: StoredEnvelope[] = [];
    for (const [userId, devices] of members) {
      for (const deviceId of devices) {
        if (userId === message.from.user && deviceId === message.from.device) continue;
        envelopes.push({ ...template, recipientUser: userId, recipientDevice: deviceId });
      }
    }
    const fresh = await this.ports.log.append(envelopes);
    const devices: Record<string, number[]> = {};
    envelopes.forEach((envelope, i) => {
      if (!fresh[i]) return;
      const list = devices[envelope.recipientUser];
      if (list) list.push(envelope.recipientDevice);
      else devices[envelope.recipientUser] = [envelope.recipientDevice];
    });
    const users = Object.keys(devices);
    if (users.length > 0) {
      const deliver: DeliverGroupMessage = { type: "deliver.group", envelope: template, devices };
      // Durable already: a user actor that misses this rebuilds from the log when it next activates.
      await ctx.system.tellMany(users.map(userKey), deliver).catch(() => {});
    }
    return { ok: true, ts, recipients: envelopes.length };
  }
}

/** Factory to register as kind `group`. */
export function groupActorFactory(ports: GroupActorPorts): (id: string) => GroupActor {
  return (id) => new GroupActor(id, ports);
}
