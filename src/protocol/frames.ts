import { type Static, Type as T } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { Base64, DeviceId, Uuid } from "./ids.ts";

/** Largest text frame a client may send, in bytes (UTF-8). Larger frames get `error too_large`. */
export const MAX_FRAME_BYTES = 256 * 1024;

// ---- client → server -------------------------------------------------------------------------

// The length bound keeps one ciphertext under the frame limit.
const Ciphertext = Base64({ maxLength: MAX_FRAME_BYTES });

/** A 1:1 send: one ciphertext per recipient device (libsignal type 2 whisper or 3 prekey). */
export const DirectSend = T.Object(
  {
    type: T.Literal("send"),
    id: Uuid,
    to: T.Object({ user: Uuid }, { additionalProperties: false }),
    messages: T.Array(
      T.Object(
        { deviceId: DeviceId, type: T.Union([T.Literal(2), T.Literal(3)]), body: Ciphertext },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: 127 },
    ),
  },
  { additionalProperties: false },
);
export type DirectSend = Static<typeof DirectSend>;

/** One ciphertext for one recipient device, as a 1:1 send lists them. */
export type OutgoingMessage = DirectSend["messages"][number];

/** A group send: one sender-key ciphertext (libsignal type 7), fanned out by the server. */
export const GroupSend = T.Object(
  {
    type: T.Literal("send"),
    id: Uuid,
    to: T.Object({ group: Uuid }, { additionalProperties: false }),
    message: T.Object({ type: T.Literal(7), body: Ciphertext }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);
export type GroupSend = Static<typeof GroupSend>;

/**
 * One received message as an ack names it: its `id` and `from`, as the `message` frame gave them.
 * Ids are chosen by senders, so only the id with its sender device names one message.
 */
export const AckedMessage = T.Object(
  {
    id: Uuid,
    from: T.Object({ user: Uuid, device: DeviceId }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);
export type AckedMessage = Static<typeof AckedMessage>;

/** The device has stored these messages (1-1000); the server may forget them. */
export const Ack = T.Object(
  { type: T.Literal("ack"), messages: T.Array(AckedMessage, { minItems: 1, maxItems: 1000 }) },
  { additionalProperties: false },
);
export type Ack = Static<typeof Ack>;

/** Replaces the socket's watch list; answered at once with each user's current state. */
export const PresenceWatch = T.Object(
  { type: T.Literal("presence.watch"), users: T.Array(Uuid, { maxItems: 1000 }) },
  { additionalProperties: false },
);
export type PresenceWatch = Static<typeof PresenceWatch>;

export const Ping = T.Object({ type: T.Literal("ping") }, { additionalProperties: false });
export type Ping = Static<typeof Ping>;

/**
 * In-band re-authentication: a fresh access token of the same user and device replaces the
 * socket's token, whose expiry closes the socket (4440) unless renewed. Answered `auth.ok`, or
 * `error unauthorized` (the socket keeps its previous token and expiry).
 */
export const Auth = T.Object(
  { type: T.Literal("auth"), token: T.String({ minLength: 1, maxLength: 4096 }) },
  { additionalProperties: false },
);
export type Auth = Static<typeof Auth>;

/** Every frame a client may send. */
export type ClientFrame = DirectSend | GroupSend | Ack | PresenceWatch | Ping | Auth;

/** Compiled checks of the client frames (compiled once, at import). */
export const checkDirectSend = TypeCompiler.Compile(DirectSend);
export const checkGroupSend = TypeCompiler.Compile(GroupSend);
export const checkAck = TypeCompiler.Compile(Ack);
export const checkPresenceWatch = TypeCompiler.Compile(PresenceWatch);
export const checkPing = TypeCompiler.Compile(Ping);
export const checkAuth = TypeCompiler.Compile(Auth);

/**
 * `checkDirectSend.Decode` of a frame that `checkDirectSend.Check` passed: the same value, its `id`
 * and `to.user` in lower case (its only `Uuid`s, the schema's only transforms), without Decode's
 * second Check and its walk of the schema, which together cost more than the Check itself on the
 * send path (docs/BENCHMARKS.md, "Embedded 1:1, stop 26"). `messages` is the frame's own array.
 * test/protocol/frames.test.ts holds it equal to Decode.
 */
export function decodeCheckedDirectSend(frame: DirectSend): DirectSend {
  return { ...frame, id: frame.id.toLowerCase(), to: { user: frame.to.user.toLowerCase() } };
}

/**
 * The messages a frame that `checkAck.Check` passed names, each by id and sender (user, device),
 * the Uuids in lower case: `checkAck.Decode(frame).messages` mapped, without Decode's second Check
 * and walk (see above). test/protocol/frames.test.ts holds it equal to Decode.
 */
export function decodeCheckedAck(frame: Ack): { id: string; senderUser: string; senderDevice: number }[] {
  return frame.messages.map((m) => ({
    id: m.id.toLowerCase(),
    senderUser: m.from.user.toLowerCase(),
    senderDevice: m.from.device,
  }));
}

/** The first validation problem of a value, as one short line (`path: message`) for the client. */
export function firstProblem(
  check: {
    Errors(value: unknown): Iterable<{ path: string; message: string; schema?: object }>;
  },
  value: unknown,
): string {
  for (const error of check.Errors(value)) {
    const where = error.path.replace(/^\//, "").replaceAll("/", ".");
    // A schema may say what it wants in words (`errorMessage`, as ajv-errors has it) where
    // TypeBox's own message would quote a pattern (`DisplayName`).
    const custom = (error.schema as { errorMessage?: unknown } | undefined)?.errorMessage;
    const what = typeof custom === "string" ? custom : error.message;
    return where ? `${where}: ${what}` : what;
  }
  return "frame does not match the protocol";
}

// ---- server → client -------------------------------------------------------------------------

/** Why a well-formed send was refused. */
export type RejectCode =
  | "mismatched_devices"
  | "not_member"
  | "unknown_recipient"
  | "rate_limited"
  | "too_large"
  | "invalid"
  | "busy";

/**
 * Codes of `error` frames: the frame was malformed or refused, the send failed and may be retried,
 * or (`unauthorized`) an `auth` frame's token was refused.
 */
export type ErrorFrameCode = "invalid" | "too_large" | "rate_limited" | "internal" | "unauthorized";

/** The send is durable: it will be delivered. `ts` is the acceptance time (Unix ms). */
export interface AcceptedFrame {
  type: "accepted";
  id: string;
  ts: number;
}

/** The send was refused; `missing`/`extra` list device ids for `mismatched_devices`. */
export interface RejectedFrame {
  type: "rejected";
  id: string;
  code: RejectCode;
  missing?: number[];
  extra?: number[];
  /** For `invalid`: which field is wrong. */
  message?: string;
  /**
   * For `busy`: wait this long (ms), then send the same frame again (nothing was stored). For
   * `rate_limited` past the account's daily storage quota: the ms until the quota's window ends.
   */
  retryAfterMs?: number;
}

/** A message for this device; redelivered with the same `id` until acked. */
export interface MessageFrame {
  type: "message";
  id: string;
  from: { user: string; device: number };
  group?: string;
  ts: number;
  envelope: { type: number; body: string };
}

/** A watched user's presence; `lastSeen` is the last time any of their devices was connected (Unix ms, 0: never). */
export interface PresenceFrame {
  type: "presence";
  user: string;
  online: boolean;
  lastSeen: number;
}

/** A frame was malformed or refused; the socket stays open. */
export interface ErrorFrame {
  type: "error";
  code: ErrorFrameCode;
  message: string;
  /** Set on `internal`: the id of the send that was not accepted (send it again with this id). */
  id?: string;
}

export interface PongFrame {
  type: "pong";
}

/** An `auth` frame's token was taken: the socket now expires at `expiresAt` (Unix ms), that token's expiry. */
export interface AuthOkFrame {
  type: "auth.ok";
  expiresAt: number;
}

/** Every frame the server sends. */
export type ServerFrame =
  | AcceptedFrame
  | RejectedFrame
  | MessageFrame
  | PresenceFrame
  | ErrorFrame
  | PongFrame
  | AuthOkFrame;

/** What `messageFrame` needs of a stored envelope (the actors' `StoredEnvelope` has these fields). */
export interface EnvelopeFields {
  id: string;
  senderUser: string;
  senderDevice: number;
  groupId: string | null;
  ts: number;
  type: number;
  body: string;
}

/** The `message` frame a device receives for one stored envelope. */
export function messageFrame(envelope: EnvelopeFields): MessageFrame {
  return {
    type: "message",
    id: envelope.id,
    from: { user: envelope.senderUser, device: envelope.senderDevice },
    ...(envelope.groupId ? { group: envelope.groupId } : {}),
    ts: envelope.ts,
    envelope: { type: envelope.type, body: envelope.body },
  };
}

/** The fields of the envelope `messageFrameText` serialised last, and its text. */
let lastFrame: { envelope: EnvelopeFields; text: string } | undefined;
/** A clear of `lastFrame` is scheduled for the end of this turn of the event loop. */
let clearScheduled = false;

function forgetLastFrame(): void {
  lastFrame = undefined;
  clearScheduled = false;
}

/**
 * The `message` frame of one envelope as JSON text: `JSON.stringify(messageFrame(envelope))`.
 * A group message reaches every member device as its own envelope object with the same fields
 * (only the recipient differs, which the frame does not name), one after another on the event
 * loop: the text is made once per message and the same string written to every socket, the last
 * envelope's fields being compared, not trusted (a one-entry memo, kept until the end of the
 * event loop's turn; equal fields give an equal frame, anything else is serialised as before).
 */
export function messageFrameText(envelope: EnvelopeFields): string {
  const last = lastFrame;
  if (
    last !== undefined &&
    last.envelope.id === envelope.id &&
    last.envelope.senderUser === envelope.senderUser &&
    last.envelope.senderDevice === envelope.senderDevice &&
    last.envelope.groupId === envelope.groupId &&
    last.envelope.ts === envelope.ts &&
    last.envelope.type === envelope.type &&
    last.envelope.body === envelope.body
  )
    return last.text;
  const text = JSON.stringify(messageFrame(envelope));
  // The fields copied, not the object kept: a caller that changes its envelope afterwards does not
  // change what the next one is compared with.
  const { id, senderUser, senderDevice, groupId, ts, type, body } = envelope;
  lastFrame = { envelope: { id, senderUser, senderDevice, groupId, ts, type, body }, text };
  // Kept for this turn of the event loop only (a fan-out's member pushes run in it), so an idle
  // node does not keep the last ciphertext it delivered, an erased sender's among them.
  if (!clearScheduled) {
    clearScheduled = true;
    setImmediate(forgetLastFrame);
  }
  return text;
}
