import type { AccountStore } from "./store.ts";

/**
 * The store setting that keeps the groups an account's sample clients have known, as
 * `{ [groupId]: name }`: one list for the CLI's `chat` and the browser client (`client:web`), which
 * may take turns on one store, so a group made or joined in one is listed by the other.
 */
export const KNOWN_GROUPS = "groups";

/** Where the CLI and the browser client kept their lists apart before they shared one. */
const EARLIER_KEYS = ["cli.groups", "web.groups"] as const;

/** Only the string-valued entries of a stored `{ [groupId]: name }` (anything else is skipped). */
function groupNames(value: unknown): Record<string, string> {
  const names: Record<string, string> = {};
  if (typeof value !== "object" || value === null) return names;
  for (const [groupId, name] of Object.entries(value)) if (typeof name === "string") names[groupId] = name;
  return names;
}

/**
 * The groups this store has known, `{ [groupId]: name }`. A store that has no shared list yet
 * (written by an earlier version) gives the union of the CLI's and the browser client's lists, the
 * browser's name winning for a group in both; the first `writeKnownGroups` makes it the shared one.
 */
export function readKnownGroups(store: AccountStore): Record<string, string> {
  const shared = store.get<unknown>(KNOWN_GROUPS);
  if (shared !== undefined) return groupNames(shared);
  return Object.assign({}, ...EARLIER_KEYS.map((key) => groupNames(store.get<unknown>(key))));
}

/** Replaces the store's list of known groups (`{ [groupId]: name }`). */
export function writeKnownGroups(store: AccountStore, groups: Record<string, string>): void {
  store.set(KNOWN_GROUPS, groups);
}
