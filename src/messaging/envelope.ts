/** One ciphertext addressed to one recipient device, as the stores keep it. */
export interface StoredEnvelope {
  /** The sender's message id (UUID); with the sender device it makes the send idempotent. */
  id: string;
  senderUser: string;
  senderDevice: number;
  recipientUser: string;
  recipientDevice: number;
  /** Set for a group send: the group the ciphertext was fanned out for. */
  groupId: string | null;
  /** Acceptance time, Unix ms. */
  ts: number;
  /** libsignal ciphertext message type (2 whisper, 3 prekey, 7 sender key). */
  type: number;
  /** The ciphertext, standard base64 as on the wire; the server cannot read it. Decoded only by the stores. */
  body: string;
}

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
