import type { ActorBehavior, ActorContext } from "./Actor.ts";
import { ActorError } from "./ActorError.ts";
import type { GroupDirectory } from "./Ports.ts";
import type { DeliverMessage, EraseMessage } from "./UserActor.ts";

/** A group send: one sender-key ciphertext to fan out to every other member. */
export interface GroupSendMessage {
  type: "send";
  id: string;
  from: { user: string; device: number };
  ts: number;
  ciphertext: { type: number; body: string };
}

/** The group's member list changed (the full new list). */
export interface GroupMembershipMessage {
  type: "membership";
  members: string[];
}

/** Everything a group actor handles. */
export type GroupMessage = GroupSendMessage | GroupMembershipMessage | EraseMessage;

/** Answer to a group send. */
export type GroupSendResult = { ok: true; recipients: number } | { ok: false; code: "not_member" };

/** Ports a group actor uses. */
export interface GroupActorPorts {
  directory: GroupDirectory;
}

/**
 * The actor of one group: authorises the sender and fans one ciphertext out to the member user
 * actors with `tellMany`, which sends one transfer per owning node, not one per member.
 */
export class GroupActor implements ActorBehavior<GroupMessage, unknown> {
  private members = new Set<string>();

  constructor(
    readonly groupId: string,
    private readonly ports: GroupActorPorts,
  ) {}

  async onActivate(): Promise<void> {
    this.members = new Set(await this.ports.directory.members(this.groupId));
  }

  async receive(message: GroupMessage, ctx: ActorContext): Promise<unknown> {
    switch (message.type) {
      case "membership":
        this.members = new Set(message.members);
        return { members: this.members.size };
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
    if (!this.members.has(message.from.user)) return { ok: false, code: "not_member" };
    const recipients = [...this.members].filter((user) => user !== message.from.user);
    const deliver: DeliverMessage = {
      type: "deliver",
      id: message.id,
      from: message.from,
      group: this.groupId,
      ts: message.ts,
      ciphertexts: [message.ciphertext],
    };
    await ctx.system.tellMany(
      recipients.map((user) => `user:${user}`),
      deliver,
    );
    return { ok: true, recipients: recipients.length };
  }
}

/** Factory to register as kind `group`. */
export function groupActorFactory(ports: GroupActorPorts): (id: string) => GroupActor {
  return (id) => new GroupActor(id, ports);
}
