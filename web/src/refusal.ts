import type { Refusal } from "./api.ts";

/**
 * What the common refusals of a send mean to the person who sent it (docs/PROTOCOL.md codes); the
 * same words as the CLI's (src/cli/chat.ts, REFUSAL_MEANING).
 */
const MEANING: Record<string, string> = {
  unknown_recipient: "no such account any more (erased, or never existed)",
  not_member: "you are not a member of this group",
  rate_limited: "this account sent too much for now",
  too_large: "the message is too large",
  forbidden: "you are not a member of this group",
  not_found: "the group no longer exists",
};

/**
 * Why a send failed, in one line: the server's code, what it means, its message and when to try
 * again, e.g. `unknown_recipient: no such account any more (erased, or never existed)`; React shows
 * the server's strings as text. Undefined (a failed message reloaded from the history, which keeps
 * no reason): `refused by the server`.
 */
export function describeRefusal(refusal: Refusal | undefined): string {
  if (!refusal) return "refused by the server";
  const meaning = MEANING[refusal.code];
  const parts = [refusal.code];
  if (meaning) parts.push(meaning);
  if (refusal.message && refusal.message !== meaning) parts.push(refusal.message);
  let line = parts.join(": ");
  if (refusal.retryAfterMs !== undefined)
    line += ` (try again in ${Math.ceil(refusal.retryAfterMs / 60_000)} min)`;
  return line;
}
