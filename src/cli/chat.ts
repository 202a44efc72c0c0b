import { createInterface, type Interface } from "node:readline";
import {
  type ChatMessage,
  ClearBoxApiError,
  type ClearBoxClient,
  type MessageRefusal,
  Messenger,
  readKnownGroups,
  writeKnownGroups,
} from "../client/index.ts";
import { printable } from "./terminal.ts";

/** What the common refusals of a send mean to the person who sent it (docs/PROTOCOL.md codes). */
const REFUSAL_MEANING: Record<string, string> = {
  unknown_recipient: "no such account any more (erased, or never existed)",
  not_member: "you are not a member of this group",
  rate_limited: "this account sent too much for now",
  too_large: "the message is too large",
  forbidden: "you are not a member of this group",
  not_found: "the group no longer exists",
};

/**
 * One line saying why a send failed: the server's code, what it means, its message and when to try
 * again, e.g. `unknown_recipient: no such account any more (erased, or never existed)`. What the
 * server chose is shown escaped (`printable`). `undefined` (an older event without a refusal):
 * `refused by the server`.
 */
export function describeRefusal(refusal: MessageRefusal | undefined): string {
  if (!refusal) return "refused by the server";
  const parts = [printable(refusal.code)];
  const meaning = REFUSAL_MEANING[refusal.code];
  if (meaning) parts.push(meaning);
  if (refusal.message && refusal.message !== meaning) parts.push(printable(refusal.message));
  let line = parts.join(": ");
  if (refusal.retryAfterMs !== undefined) {
    line += ` (try again in ${Math.ceil(refusal.retryAfterMs / 60_000)} min)`;
  }
  return line;
}

export const CHAT_HELP = `commands in chat (anything else is a message to the current conversation):
  /to <username>               talk to this user
  /group new <name> <user...>  create a group and invite these users; talk in it
  /group <name>                talk in a group you are in (groups that share a name show, and are
                               typed, as <name>~<first 8 of the group id>)
  /group leave                 leave the current group
  /groups                      the groups you know
  /invite <username>           invite a user to the current group (you must be its admin)
  /accept [<name>]             your invitations; with a group's name, join it
  /decline <name>              decline the invitation to that group
  /who                         your contacts, with presence (shown for people you share a group
                               with; anyone else shows offline)
  /devices                     this account's devices
  /verify <username> [confirm] show the safety numbers with a user; with confirm, mark those shown
                               verified, after comparing them with the other person (in person or
                               by a call)
  /history                     the last messages of the current conversation
  /help                        this list
  /quit                        leave (Ctrl-D too)`;

const time = (ts: number) => new Date(ts).toTimeString().slice(0, 5);

type Group = { groupId: string; name: string };

/**
 * What two names are compared by, so that names a terminal shows alike are the same name: NFKC
 * (full-width and compatibility forms become the plain letters), without default-ignorable code
 * points (zero-width space and joiners, U+FEFF, soft hyphen, Hangul fillers, variation selectors:
 * nothing on screen), white space, or format and control characters, lower-cased. A name
 * "team\u200b" or "team " showed as `#team` beside your own `#team`, without the `~<id>` that
 * tells them apart. Look-alike letters of other scripts (Cyrillic "е") are not folded here.
 */
export function nameKey(name: string): string {
  return name
    .normalize("NFKC")
    .replace(/[\p{Default_Ignorable_Code_Point}\p{White_Space}\p{Cc}\p{Cf}]/gu, "")
    .toLowerCase();
}

/**
 * How a group is shown and typed: its name, or `<name>~<first 8 hex of its id>` when another group
 * of `among` has the same name (compared by `nameKey`: case, invisible characters and compatibility
 * forms aside). Group names are not unique: anyone can make a group named like one you are in and
 * invite you.
 */
export function groupLabel(group: Group, among: Iterable<Group>): string {
  const name = nameKey(group.name);
  for (const other of among) {
    if (other.groupId !== group.groupId && nameKey(other.name) === name) {
      return `${group.name}~${group.groupId.slice(0, 8)}`;
    }
  }
  return group.name;
}

/**
 * The group of `candidates` that `typed` (with or without `#`) names by its label (`groupLabel`
 * among `among`) or, when only one candidate has it, by its name; else every candidate with that
 * name: none, or several when the name is shared, which the caller refuses (listing their labels)
 * rather than guess.
 */
export function pickGroup(typed: string, candidates: Group[], among: Group[] = candidates): Group | Group[] {
  // Compared by nameKey, as labels are made: what is typed is what the screen showed, without the
  // invisible characters a name may hold.
  const wanted = nameKey(typed.replace(/^#/, ""));
  const labelled = candidates.filter((g) => nameKey(groupLabel(g, among)) === wanted);
  if (labelled.length === 1) return labelled[0];
  const named = candidates.filter((g) => nameKey(g.name) === wanted);
  return named.length === 1 ? named[0] : named;
}

/**
 * The groups this store has known (`readKnownGroups`: the list the CLI shares with the browser
 * client), and those of its message history not among
 * them (a store from before they were kept), whose names are asked of the server (groups it no
 * longer shows, having been left, are skipped). Saved back when the history added any.
 */
async function knownGroups(client: ClearBoxClient): Promise<Map<string, Group>> {
  const groups = new Map<string, Group>();
  for (const [groupId, name] of Object.entries(readKnownGroups(client.store))) {
    groups.set(groupId, { groupId, name });
  }
  const fromHistory = client.store.db
    .query<{ conversation: string }, []>(
      "select distinct conversation from history where conversation like 'group:%'",
    )
    .all()
    .map((row) => row.conversation.slice("group:".length))
    .filter((groupId) => !groups.has(groupId));
  const found = await Promise.all(
    fromHistory.map((groupId) =>
      client.http.group(groupId).then(
        (info) => ({ groupId, name: info.name }),
        () => undefined,
      ),
    ),
  );
  for (const group of found) if (group) groups.set(group.groupId, group);
  if (found.some(Boolean)) saveKnownGroups(client, groups);
  return groups;
}

function saveKnownGroups(client: ClearBoxClient, groups: Map<string, Group>): void {
  writeKnownGroups(client.store, Object.fromEntries([...groups.values()].map((g) => [g.groupId, g.name])));
}

/**
 * The interactive `chat` command: one Messenger (one socket, reconnecting) and a readline prompt.
 * Incoming messages, presence changes and safety-number warnings are printed above the line being
 * typed, which is redrawn as it was. Resolves with the exit code when the user quits or the
 * session ends for good (signed out, device removed, replaced by another socket, account erased).
 */
export async function chat(
  client: ClearBoxClient,
  io: { input: NodeJS.ReadableStream; output: NodeJS.WritableStream },
): Promise<number> {
  const messenger = new Messenger(client);
  // By group id; every group this store has known, kept in it: a session that knew only the groups
  // it had seen itself showed a same-named group that spoke first as #<name>, and /group <name>
  // took it, so what was meant for your group went to the one anyone could invite you to.
  const groups = await knownGroups(client);
  const remember = (group: Group) => {
    groups.set(group.groupId, { groupId: group.groupId, name: group.name });
    saveKnownGroups(client, groups);
  };
  const forget = (groupId: string) => {
    groups.delete(groupId);
    saveKnownGroups(client, groups);
  };
  const label = (group: Group) => printable(groupLabel(group, groups.values()));
  /** The known group `typed` names, or a line saying why none is (unknown, or a shared name). */
  const knownGroup = (typed: string): Group | string => {
    const found = pickGroup(typed, [...groups.values()]);
    if (!Array.isArray(found)) return found;
    if (found.length === 0) return `* no group named ${typed} (see /groups)`;
    return `* ${found.length} groups are named ${typed}: ${found.map((g) => `/group ${label(g)}`).join(" or ")}`;
  };
  const presence = new Map<string, boolean>();
  /** The safety numbers `/verify <user>` last showed, by user id: what `/verify <user> confirm` vouches for. */
  const shownNumbers = new Map<string, { deviceId: number; safetyNumber: string }[]>();
  let current:
    | { kind: "user"; userId: string; username: string }
    | { kind: "group"; groupId: string; name: string }
    | undefined;

  const rl: Interface = createInterface({
    input: io.input,
    output: io.output,
    terminal: (io.output as { isTTY?: boolean }).isTTY === true,
  });
  const promptText = () =>
    current
      ? current.kind === "user"
        ? `[${printable(current.username)}]> `
        : `[#${label(current)}]> `
      : "> ";
  /**
   * Prints lines above the prompt. Whatever a peer, the server or the network chose goes through
   * printable() where it is interpolated (so even its line breaks show as `\n`); the line is passed
   * through it once more, line by line, so no escape sequence, CR or BEL reaches the terminal.
   */
  const print = (text: string) => {
    const line = text.split("\n").map(printable).join("\n");
    if ((io.output as { isTTY?: boolean }).isTTY) {
      io.output.write("\r\x1b[K");
      io.output.write(`${line}\n`);
      rl.setPrompt(promptText());
      rl.prompt(true);
    } else {
      io.output.write(`${line}\n`);
    }
  };

  /** Prints a line and answers `true` (keep going), for the command handlers' early returns. */
  const say = (line: string) => {
    print(line);
    return true;
  };

  /** How a group is shown (`label`), asking the server for its name the first time. */
  const groupName = async (groupId: string): Promise<string> => {
    const known = groups.get(groupId);
    if (known) return label(known);
    try {
      const info = await client.http.group(groupId);
      const group = { groupId, name: info.name };
      remember(group);
      return label(group);
    } catch {
      return groupId.slice(0, 8);
    }
  };

  messenger.on("message", async (m: ChatMessage) => {
    if (m.outgoing) {
      if (m.state === "failed")
        print(`! not delivered: "${printable(m.text)}": ${describeRefusal(m.refusal)}`);
      return;
    }
    const where = m.group ? ` #${await groupName(m.group)}` : "";
    print(`[${time(m.ts)}]${where} ${printable(m.from.username)}: ${printable(m.text)}`);
  });
  messenger.on("presence", (p) => {
    // The server answers a user's own presence too (docs/PROTOCOL.md, "Presence"), and the store
    // keeps the account among its contacts: "* <me> is online" would announce this very session.
    if (p.userId === client.userId) return;
    const before = presence.get(p.userId);
    presence.set(p.userId, p.online);
    if (before !== undefined && before !== p.online)
      print(`* ${printable(p.username ?? p.userId)} is ${p.online ? "online" : "offline"}`);
  });
  messenger.on("identityChanged", (change) => {
    print(
      `! the safety number with ${printable(change.username ?? change.userId)} changed (device ${change.deviceId}): their key is new. ` +
        `Compare it again with /verify ${printable(change.username ?? change.userId)} before trusting it.`,
    );
  });
  messenger.on("undecryptable", (u) =>
    print(`! a message from ${printable(u.from.user)} could not be decrypted (${printable(u.reason)})`),
  );
  let announcedOffline = false;
  let wasOnline = false;
  messenger.on("status", (status, detail) => {
    if (status === "online") {
      if (announcedOffline) print(wasOnline ? "* reconnected" : "* connected");
      announcedOffline = false;
      wasOnline = true;
    } else if (status === "offline" && !announcedOffline) {
      announcedOffline = true;
      if (wasOnline) print("* connection lost; reconnecting (messages you send are queued)");
      else
        print(
          `* not connected: ${printable(detail.reason ?? `cannot reach ${client.serverUrl}`)}; retrying (messages you send are queued)`,
        );
    }
  });

  const run = async (line: string): Promise<boolean> => {
    const [command, ...args] = line.trim().split(/\s+/);
    switch (command) {
      case "/quit":
      case "/exit":
        return false;
      case "/help":
        print(CHAT_HELP);
        return true;
      case "/to": {
        if (!args[0]) return say("usage: /to <username>");
        const user = await client.findUser(args[0].toLowerCase());
        current = { kind: "user", ...user };
        messenger.watch([user.userId]);
        print(`* talking to ${printable(user.username)}`);
        return true;
      }
      case "/groups": {
        if (groups.size === 0) print("* no groups yet: /group new <name> <user...>");
        for (const g of groups.values()) print(`  #${label(g)}`);
        return true;
      }
      case "/group": {
        if (args[0] === "new") {
          const [name, ...members] = args.slice(1);
          if (!name) return say("usage: /group new <name> <user...>");
          const groupId = await messenger.createGroup(
            name,
            members.map((m) => m.toLowerCase()),
          );
          remember({ groupId, name });
          current = { kind: "group", groupId, name };
          print(
            `* created #${label(current)}; ${members.length ? `invited ${members.join(", ")} (members once they /accept)` : "nobody else yet"}`,
          );
          return true;
        }
        if (args[0] === "leave") {
          if (current?.kind !== "group") return say("* not in a group conversation");
          await client.http.removeGroupMember(current.groupId, client.userId);
          print(`* left #${label(current)}`);
          forget(current.groupId);
          current = undefined;
          return true;
        }
        if (!args[0]) return say("usage: /group <name>");
        const group = knownGroup(args[0]);
        if (typeof group === "string") return say(group);
        current = { kind: "group", ...group };
        print(`* talking in #${label(group)}`);
        return true;
      }
      case "/invite": {
        if (current?.kind !== "group" || !args[0]) return say("usage (in a group): /invite <username>");
        const user = await client.findUser(args[0].toLowerCase());
        await client.http.addGroupMember(current.groupId, user.userId);
        print(`* invited ${printable(user.username)} to #${label(current)} (a member once they /accept)`);
        return true;
      }
      case "/accept":
      case "/decline": {
        const invitations = (await client.http.invitations()).map((i) => ({
          groupId: i.groupId,
          name: i.name,
        }));
        // Labelled among the groups known too: an invitation to a second "team" shows as team~<id>.
        const among = [...groups.values(), ...invitations];
        const shown = (g: Group) => printable(groupLabel(g, among));
        if (!args[0]) {
          if (invitations.length === 0) print("* no invitations");
          for (const i of invitations) print(`  #${shown(i)} (/accept ${shown(i)} or /decline ${shown(i)})`);
          return true;
        }
        const found = pickGroup(args[0], invitations, among);
        if (Array.isArray(found)) {
          return say(
            found.length === 0
              ? `* no invitation to a group named ${args[0]} (see /accept)`
              : `* ${found.length} invitations are to groups named ${args[0]}: ${found.map((g) => `${command} ${shown(g)}`).join(" or ")}`,
          );
        }
        if (command === "/decline") {
          await client.http.declineInvitation(found.groupId);
          print(`* declined #${shown(found)}`);
          return true;
        }
        await client.http.acceptInvitation(found.groupId);
        remember(found);
        current = { kind: "group", ...found };
        print(`* joined #${label(found)}`);
        return true;
      }
      case "/who": {
        const contacts = client.contacts().filter((c) => c.userId !== client.userId);
        if (contacts.length === 0) print("* no contacts yet: /to <username>");
        for (const c of contacts) {
          const state = presence.get(c.userId);
          print(`  ${state === undefined ? "?" : state ? "●" : "○"} ${printable(c.username)}`);
        }
        return true;
      }
      case "/devices": {
        for (const d of await client.http.devices()) {
          const self = d.deviceId === client.deviceId ? " (this one)" : "";
          print(`  device ${d.deviceId}${d.name ? ` ${printable(d.name)}` : ""}${self}`);
        }
        return true;
      }
      case "/verify": {
        if (!args[0]) return say("usage: /verify <username> [confirm]");
        const user = await client.findUser(args[0].toLowerCase());
        const username = printable(user.username);
        const numbers = client.safetyNumbers(user.userId);
        if (numbers.length === 0) return say(`* no session with ${username} yet: exchange a message first`);
        if (args[1] === "confirm") {
          // Only what was shown and compared: a device the server added meanwhile was never seen.
          const compared = shownNumbers.get(user.userId);
          if (!compared) return say(`* compare the numbers first: /verify ${username}`);
          const left = client.markVerified(user.userId, compared);
          print(`* ${username} marked verified${left.length ? " (the devices compared)" : ""}`);
          if (left.length) {
            print(
              `! ${username} device ${left.join(", ")}: not among the numbers you compared (new or changed since): /verify ${username} again`,
            );
          }
          return true;
        }
        shownNumbers.set(user.userId, numbers);
        for (const n of numbers) {
          const state = n.changed ? "CHANGED, not verified" : n.verified ? "verified" : "not verified";
          print(`  ${username} device ${n.deviceId}: ${n.safetyNumber}  (${state})`);
        }
        print(`* compare with ${username}'s screen; if they match: /verify ${username} confirm`);
        return true;
      }
      case "/history": {
        if (!current) return say("* no conversation: /to <username>");
        const conversation = current.kind === "user" ? current.userId : `group:${current.groupId}`;
        for (const m of messenger.history(conversation, 20))
          print(
            `  [${time(m.ts)}] ${printable(m.from.username)}: ${printable(m.text)}${m.state === "queued" ? " (queued)" : ""}`,
          );
        return true;
      }
      default: {
        if (command.startsWith("/")) return say(`* unknown command ${command}: /help`);
        if (!current) return say("* to whom? /to <username> first");
        const text = line.trim();
        if (current.kind === "user") await messenger.sendText(current.userId, text);
        else await messenger.sendGroupText(current.groupId, text);
        return true;
      }
    }
  };

  // First: a store in use by another process is refused (StoreInUseError) before anything says "signed in".
  messenger.start();
  print(`signed in as ${client.username ?? client.userId} (device ${client.deviceId}); /help for commands`);
  rl.setPrompt(promptText());
  rl.prompt();
  // Invitations are not pushed (docs/PROTOCOL.md, "Groups, invitations and blocks"): without this,
  // someone invited while away would not know until they typed /accept.
  void client.http.invitations().then(
    (invitations) => {
      if (invitations.length === 0) return;
      const among = invitations.map((i) => ({ groupId: i.groupId, name: i.name }));
      const shown = among.map((g) => printable(groupLabel(g, among)));
      print(`* invited to ${shown.map((s) => `#${s}`).join(", ")}: /accept <name> to join, /decline <name>`);
    },
    () => undefined, // the listing is a courtesy: /accept asks again
  );
  return new Promise<number>((resolve) => {
    let finished = false;
    const finish = (code: number) => {
      if (finished) return;
      finished = true;
      messenger.stop();
      rl.close();
      resolve(code);
    };
    messenger.on("status", (status, detail) => {
      if (status !== "stopped" || finished) return;
      print(`* session ended (${detail.code ?? ""} ${printable(detail.reason ?? "")})`.replace("( ", "("));
      finish(1);
    });
    // Lines are handled one at a time, in order, even when one waits for the server.
    let chain = Promise.resolve(true);
    rl.on("line", (line) => {
      chain = chain.then(async (going) => {
        if (!going || finished) return false;
        if (line.trim() === "") {
          rl.prompt();
          return true;
        }
        try {
          const more = await run(line);
          if (!more) {
            finish(0);
            return false;
          }
        } catch (error) {
          const message =
            error instanceof ClearBoxApiError
              ? error.status === 404
                ? "no such user or group"
                : `${error.code}: ${error.message}`
              : (error as Error).message;
          print(`! ${printable(message)}`);
        }
        rl.setPrompt(promptText());
        rl.prompt();
        return true;
      });
    });
    rl.on("close", () => void chain.then(() => finish(0)));
  });
}
