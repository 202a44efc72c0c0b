import type { StoredEnvelope } from "../../actors/index.ts";

/** One ciphertext addressed to one recipient device; the actors' port defines it, the stores keep it. */
export type { StoredEnvelope };

/** The frame a device receives for an envelope (protocol.md, server → client `message`). */
export function messageFrame(envelope: StoredEnvelope) {
  return {
    type: "message" as const,
    id: envelope.id,
    from: { user: envelope.senderUser, device: envelope.senderDevice },
    ...(envelope.groupId ? { group: envelope.groupId } : {}),
    ts: envelope.ts,
    envelope: { type: envelope.type, body: envelope.body },
  };
}

/** Key of a recipient device, as used in maps and queue names. */
export function deviceKey(userId: string, deviceId: number): string {
  return `${userId}.${deviceId}`;
}
