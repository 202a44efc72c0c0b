import { type Static, Type as T } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";

/** Largest text frame a client may send (protocol.md). */
export const MAX_FRAME_BYTES = 256 * 1024;

// A pattern rather than `format: "uuid"`, so the check does not depend on a registered format.
const Uuid = T.String({
  pattern: "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
});
// Standard base64 with padding; the length bound keeps one ciphertext under the frame limit.
const Base64 = T.String({
  pattern: "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
  minLength: 4,
  maxLength: MAX_FRAME_BYTES,
});
const DeviceId = T.Integer({ minimum: 1, maximum: 127 });

export const DirectSend = T.Object(
  {
    type: T.Literal("send"),
    id: Uuid,
    to: T.Object({ user: Uuid }, { additionalProperties: false }),
    messages: T.Array(
      T.Object(
        { deviceId: DeviceId, type: T.Union([T.Literal(2), T.Literal(3)]), body: Base64 },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: 127 },
    ),
  },
  { additionalProperties: false },
);
export type DirectSend = Static<typeof DirectSend>;

export const GroupSend = T.Object(
  {
    type: T.Literal("send"),
    id: Uuid,
    to: T.Object({ group: Uuid }, { additionalProperties: false }),
    message: T.Object({ type: T.Literal(7), body: Base64 }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);
export type GroupSend = Static<typeof GroupSend>;

export const Ack = T.Object(
  { type: T.Literal("ack"), ids: T.Array(Uuid, { minItems: 1, maxItems: 1000 }) },
  { additionalProperties: false },
);
export type Ack = Static<typeof Ack>;

export const PresenceWatch = T.Object(
  { type: T.Literal("presence.watch"), users: T.Array(Uuid, { maxItems: 1000 }) },
  { additionalProperties: false },
);
export type PresenceWatch = Static<typeof PresenceWatch>;

export const Ping = T.Object({ type: T.Literal("ping") }, { additionalProperties: false });

export const checkDirectSend = TypeCompiler.Compile(DirectSend);
export const checkGroupSend = TypeCompiler.Compile(GroupSend);
export const checkAck = TypeCompiler.Compile(Ack);
export const checkPresenceWatch = TypeCompiler.Compile(PresenceWatch);
export const checkPing = TypeCompiler.Compile(Ping);

/** Why a well-formed send was refused (protocol.md, `rejected`). */
export type RejectCode =
  | "mismatched_devices"
  | "not_member"
  | "unknown_recipient"
  | "rate_limited"
  | "too_large"
  | "invalid";

/** The first validation problem of a frame, as one short line for the client. */
export function firstProblem(
  check: { Errors(value: unknown): Iterable<{ path: string; message: string }> },
  value: unknown,
): string {
  for (const error of check.Errors(value)) {
    const where = error.path.replace(/^\//, "").replaceAll("/", ".");
    return where ? `${where}: ${error.message}` : error.message;
  }
  return "frame does not match the protocol";
}
