import { type FormEvent, useCallback, useEffect, useRef, useState } from "react";
import {
  type Account,
  api,
  apiPath,
  type Contact,
  events,
  type Group,
  type Invitation,
  type Message,
  type Refusal,
  type SafetyNumber,
} from "./api.ts";
import { describeRefusal } from "./refusal.ts";

/**
 * Identifies a message in a conversation: ids are chosen by senders, so two senders' messages may
 * share one; the sender's user and device make it unique (docs/PROTOCOL.md, the `ack` frame).
 */
function messageKey(m: Message): string {
  return `${m.from.userId}/${m.from.deviceId}/${m.id}`;
}

type View =
  | { kind: "chat"; conversation: string }
  | { kind: "safety"; userId: string }
  | { kind: "devices" }
  | { kind: "account" }
  | { kind: "none" };

export function App() {
  const [account, setAccount] = useState<Account | null | undefined>(undefined);
  useEffect(() => {
    api<{ account: Account | null }>("GET", "/api/state").then(
      (state) => setAccount(state.account),
      () => setAccount(null),
    );
  }, []);
  if (account === undefined) return <p className="empty">Loading…</p>;
  if (!account) return <SignIn onSignedIn={setAccount} />;
  return <Chat account={account} onSignedOut={() => setAccount(null)} />;
}

function SignIn({ onSignedIn }: { onSignedIn: (account: Account) => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [serverUrl, setServerUrl] = useState("");
  const [error, setError] = useState("");
  // What is under way, said on its button: creating an account makes this device's keys and the
  // server hashes the password (argon2id), a few seconds on a loaded machine with nothing else shown.
  const [busy, setBusy] = useState<"login" | "register" | null>(null);
  const submit = async (register: boolean) => {
    setBusy(register ? "register" : "login");
    setError("");
    try {
      const { account } = await api<{ account: Account }>("POST", register ? "/api/register" : "/api/login", {
        username,
        password,
        ...(serverUrl ? { serverUrl } : {}),
      });
      onSignedIn(account);
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(null);
    }
  };
  return (
    <form
      className="auth"
      aria-busy={busy !== null}
      onSubmit={(event) => {
        event.preventDefault();
        void submit(false);
      }}
    >
      <h1>ClearBox</h1>
      <input
        aria-label="username"
        placeholder="username"
        value={username}
        onChange={(e) => setUsername(e.target.value)}
      />
      <input
        aria-label="password"
        placeholder="password"
        type="password"
        value={password}
        onChange={(e) => setPassword(e.target.value)}
      />
      <input
        aria-label="server"
        placeholder="server (default: the saved one, else http://127.0.0.1:8080)"
        value={serverUrl}
        onChange={(e) => setServerUrl(e.target.value)}
      />
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <button className="primary" type="submit" disabled={busy !== null}>
        {busy === "login" ? "Signing in…" : "Sign in"}
      </button>
      <button type="button" disabled={busy !== null} onClick={() => void submit(true)}>
        {busy === "register" ? "Creating account…" : "Create account"}
      </button>
    </form>
  );
}

function Chat({ account, onSignedOut }: { account: Account; onSignedOut: () => void }) {
  const [contacts, setContacts] = useState<Contact[]>([]);
  const [groups, setGroups] = useState<Group[]>([]);
  const [invitations, setInvitations] = useState<Invitation[]>([]);
  const [view, setView] = useState<View>({ kind: "none" });
  const [messages, setMessages] = useState<Message[]>([]);
  const [status, setStatus] = useState("connecting");
  const [error, setError] = useState("");
  const viewRef = useRef(view);
  viewRef.current = view;
  // Why sends failed, by message key: the history the local process answers keeps no reason, so a
  // conversation opened again still shows the one its failure event gave.
  const refusals = useRef(new Map<string, Refusal>());
  const withRefusal = useCallback((m: Message): Message => {
    const refusal = m.state === "failed" ? refusals.current.get(messageKey(m)) : undefined;
    return refusal && !m.refusal ? { ...m, refusal } : m;
  }, []);

  const refresh = useCallback(async () => {
    const list = await api<{ contacts: Contact[]; groups: Group[] }>("GET", "/api/contacts");
    setContacts(list.contacts);
    setGroups(list.groups);
    const pending = await api<{ invitations: Invitation[] }>("GET", "/api/invitations");
    setInvitations(pending.invitations);
  }, []);

  const openConversation = useCallback(
    async (conversation: string) => {
      setView({ kind: "chat", conversation });
      const { messages } = await api<{ messages: Message[] }>(
        "GET",
        apiPath`/api/conversations/${conversation}`,
      );
      setMessages(messages.map(withRefusal));
      await api("POST", apiPath`/api/conversations/${conversation}/read`, {});
      await refresh();
    },
    [refresh, withRefusal],
  );

  useEffect(() => {
    // Invitations come by HTTP only: look for new ones now and then.
    const timer = setInterval(() => void refresh().catch(() => undefined), 3000);
    return () => clearInterval(timer);
  }, [refresh]);

  useEffect(() => {
    void refresh();
    return events((event) => {
      if (event.type === "status") {
        setStatus(event.status);
        if (event.status === "stopped" && event.code)
          setError(`Session ended (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
        return;
      }
      if (event.type === "message") {
        if (event.message.refusal) refusals.current.set(messageKey(event.message), event.message.refusal);
        const current = viewRef.current;
        if (current.kind === "chat" && current.conversation === event.message.conversation) {
          const key = messageKey(event.message);
          setMessages((list) => [...list.filter((m) => messageKey(m) !== key), event.message]);
          if (!event.message.outgoing)
            void api("POST", apiPath`/api/conversations/${current.conversation}/read`, {});
        }
      }
      void refresh();
    });
  }, [refresh]);

  const conversationName = (conversation: string) => {
    if (conversation.startsWith("group:")) {
      return `#${groups.find((g) => `group:${g.groupId}` === conversation)?.name ?? "group"}`;
    }
    return contacts.find((c) => c.userId === conversation)?.username ?? conversation;
  };

  return (
    <div className="app">
      <aside className="sidebar">
        <header>
          <strong data-testid="me">{account.username}</strong>
          <div className="status" data-testid="status">
            device {account.deviceId} · {status}
          </div>
        </header>
        <AddContact
          onAdded={async (userId) => {
            await refresh();
            await openConversation(userId);
          }}
          onError={setError}
        />
        <h2>Contacts</h2>
        {contacts.map((c) => (
          <button
            type="button"
            key={c.userId}
            className={`item ${view.kind === "chat" && view.conversation === c.userId ? "active" : ""}`}
            data-testid={`contact-${c.username}`}
            onClick={() => void openConversation(c.userId)}
          >
            <span
              className={`dot ${c.online ? "online" : ""}`}
              data-testid={`presence-${c.username}`}
              data-online={c.online}
            />
            <span>{c.username}</span>
            {c.changed && (
              <span className="warn-icon" title="safety number changed">
                ⚠
              </span>
            )}
            {c.verified && !c.changed && <span title="verified">✔</span>}
            {c.unread > 0 && (
              <span className="badge" data-testid={`unread-${c.username}`}>
                {c.unread}
              </span>
            )}
          </button>
        ))}
        <h2>Groups</h2>
        {groups.map((g) => (
          <button
            type="button"
            key={g.groupId}
            className={`item ${view.kind === "chat" && view.conversation === `group:${g.groupId}` ? "active" : ""}`}
            data-testid={`group-${g.name}`}
            onClick={() => void openConversation(`group:${g.groupId}`)}
          >
            <span>#{g.name}</span>
            {g.unread > 0 && <span className="badge">{g.unread}</span>}
          </button>
        ))}
        {invitations.map((i) => (
          <div key={i.groupId} className="item" data-testid={`invitation-${i.name}`}>
            <span>
              #{i.name} from {i.invitedBy}
            </span>
            <button
              type="button"
              onClick={async () => {
                const accepted = await api<{ groupId: string }>(
                  "POST",
                  apiPath`/api/invitations/${i.groupId}/accept`,
                  {},
                );
                await refresh();
                await openConversation(`group:${accepted.groupId}`);
              }}
            >
              Accept
            </button>
            <button
              type="button"
              onClick={async () => {
                await api("POST", apiPath`/api/invitations/${i.groupId}/decline`, {});
                await refresh();
              }}
            >
              Decline
            </button>
          </div>
        ))}
        <NewGroup
          onCreated={async (groupId) => {
            await refresh();
            await openConversation(`group:${groupId}`);
          }}
          onError={setError}
        />
        <h2>Settings</h2>
        <button type="button" className="item" onClick={() => setView({ kind: "devices" })}>
          Devices
        </button>
        <button
          type="button"
          className="item"
          data-testid="account-settings"
          onClick={() => setView({ kind: "account" })}
        >
          Export and erasure
        </button>
      </aside>
      <main className="main">
        {error && (
          <div className="banner error" role="alert">
            {error}
            <button type="button" onClick={() => setError("")}>
              Dismiss
            </button>
          </div>
        )}
        {view.kind === "chat" && (
          <Conversation
            name={conversationName(view.conversation)}
            conversation={view.conversation}
            contact={contacts.find((c) => c.userId === view.conversation)}
            messages={messages}
            onVerify={(userId) => setView({ kind: "safety", userId })}
            onLeft={() => {
              setView({ kind: "none" });
              void refresh();
            }}
            onError={setError}
          />
        )}
        {view.kind === "safety" && (
          <Safety
            contact={contacts.find((c) => c.userId === view.userId)}
            userId={view.userId}
            onDone={async () => {
              await refresh();
              await openConversation(view.userId);
            }}
          />
        )}
        {view.kind === "devices" && <Devices />}
        {view.kind === "account" && <AccountPanel username={account.username} onErased={onSignedOut} />}
        {view.kind === "none" && <p className="empty">Add a contact by username to start chatting.</p>}
      </main>
    </div>
  );
}

function AddContact({
  onAdded,
  onError,
}: {
  onAdded: (userId: string) => Promise<void>;
  onError: (e: string) => void;
}) {
  const [username, setUsername] = useState("");
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    try {
      const { contact } = await api<{ contact: { userId: string } }>("POST", "/api/contacts", { username });
      setUsername("");
      await onAdded(contact.userId);
    } catch (e) {
      onError(`${username}: ${(e as Error).message}`);
    }
  };
  return (
    <form onSubmit={(e) => void submit(e)}>
      <input
        className="grow"
        aria-label="add contact"
        placeholder="username"
        value={username}
        onChange={(e) => setUsername(e.target.value)}
      />
      <button type="submit">Add</button>
    </form>
  );
}

function NewGroup({
  onCreated,
  onError,
}: {
  onCreated: (groupId: string) => Promise<void>;
  onError: (e: string) => void;
}) {
  const [name, setName] = useState("");
  const [members, setMembers] = useState("");
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    try {
      const { groupId } = await api<{ groupId: string }>("POST", "/api/groups", {
        name,
        members: members.split(/[\s,]+/).filter(Boolean),
      });
      setName("");
      setMembers("");
      await onCreated(groupId);
    } catch (e) {
      onError((e as Error).message);
    }
  };
  return (
    <form onSubmit={(e) => void submit(e)} style={{ flexDirection: "column" }}>
      <input
        aria-label="group name"
        placeholder="new group name"
        value={name}
        onChange={(e) => setName(e.target.value)}
      />
      <input
        aria-label="group members"
        placeholder="members (usernames)"
        value={members}
        onChange={(e) => setMembers(e.target.value)}
      />
      <button type="submit">Create group</button>
    </form>
  );
}

function Conversation(props: {
  name: string;
  conversation: string;
  contact?: Contact;
  messages: Message[];
  onVerify: (userId: string) => void;
  onError: (e: string) => void;
  onLeft: () => void;
}) {
  const [text, setText] = useState("");
  const end = useRef<HTMLDivElement>(null);
  // biome-ignore lint/correctness/useExhaustiveDependencies: scroll to the newest message whenever one is added
  useEffect(() => {
    // Block body: newer browsers return a promise from scrollIntoView, and an effect must not.
    end.current?.scrollIntoView?.();
  }, [props.messages.length]);
  const send = async (event: FormEvent) => {
    event.preventDefault();
    if (!text.trim()) return;
    try {
      await api("POST", apiPath`/api/conversations/${props.conversation}`, { text });
      setText("");
    } catch (e) {
      props.onError((e as Error).message);
    }
  };
  return (
    <>
      <header>
        <span className="title" data-testid="conversation-title">
          {props.name}
        </span>
        {props.contact && (
          <button type="button" onClick={() => props.contact && props.onVerify(props.contact.userId)}>
            Safety number
          </button>
        )}
        {props.conversation.startsWith("group:") && (
          <>
            <InviteToGroup groupId={props.conversation.slice(6)} onError={props.onError} />
            <button
              type="button"
              onClick={async () => {
                try {
                  await api("POST", apiPath`/api/groups/${props.conversation.slice(6)}/leave`, {});
                  props.onLeft();
                } catch (e) {
                  props.onError((e as Error).message);
                }
              }}
            >
              Leave
            </button>
          </>
        )}
      </header>
      {props.contact?.changed && (
        <div className="banner" role="alert" data-testid="key-change-warning">
          <span>
            ⚠ {props.contact.username}'s safety number has changed. They may have reinstalled ClearBox, or
            someone may be intercepting your messages. Compare the new safety number with them before you
            trust it.
          </span>
          <button type="button" onClick={() => props.contact && props.onVerify(props.contact.userId)}>
            Verify
          </button>
        </div>
      )}
      <div className="messages" data-testid="messages">
        {props.messages.map((m) => (
          <div key={messageKey(m)} className={`bubble ${m.outgoing ? "out" : ""}`} data-testid="message">
            {!m.outgoing && m.group && <div className="meta">{m.from.username}</div>}
            <div className="text">{m.text}</div>
            <div className="meta">
              {new Date(m.ts).toLocaleTimeString()} {m.outgoing ? `· ${m.state}` : ""}
              {m.outgoing && m.state === "failed" && (
                <span data-testid="refusal">: {describeRefusal(m.refusal)}</span>
              )}
            </div>
          </div>
        ))}
        <div ref={end} />
      </div>
      <form className="composer" onSubmit={(e) => void send(e)}>
        <input
          className="grow"
          aria-label="message"
          placeholder="Message"
          value={text}
          onChange={(e) => setText(e.target.value)}
        />
        <button className="primary" type="submit">
          Send
        </button>
      </form>
    </>
  );
}

function InviteToGroup({ groupId, onError }: { groupId: string; onError: (e: string) => void }) {
  const [username, setUsername] = useState("");
  const [done, setDone] = useState("");
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    try {
      await api("POST", apiPath`/api/groups/${groupId}/invite`, { username });
      setDone(`${username} invited`);
      setUsername("");
    } catch (e) {
      onError(`${username}: ${(e as Error).message}`);
    }
  };
  return (
    <form onSubmit={(e) => void submit(e)} style={{ display: "flex", gap: 6 }}>
      <input
        aria-label="invite"
        placeholder="invite username"
        value={username}
        onChange={(e) => setUsername(e.target.value)}
      />
      <button type="submit">Invite</button>
      {done && <span className="status">{done}</span>}
    </form>
  );
}

function Safety({
  contact,
  userId,
  onDone,
}: {
  contact?: Contact;
  userId: string;
  onDone: () => Promise<void>;
}) {
  const [numbers, setNumbers] = useState<SafetyNumber[] | undefined>();
  const [left, setLeft] = useState<number[]>([]);
  useEffect(() => {
    void api<{ numbers: SafetyNumber[] }>("GET", apiPath`/api/safety/${userId}`).then((r) =>
      setNumbers(r.numbers),
    );
  }, [userId]);
  const verify = async () => {
    // Only the numbers on screen: a device the server added since they were shown stays unverified.
    const compared = (numbers ?? []).map(({ deviceId, safetyNumber }) => ({ deviceId, safetyNumber }));
    const r = await api<{ numbers: SafetyNumber[]; left: number[] }>(
      "POST",
      apiPath`/api/safety/${userId}/verify`,
      {
        compared,
      },
    );
    setNumbers(r.numbers);
    setLeft(r.left);
    if (r.left.length === 0) await onDone();
  };
  return (
    <div className="panel">
      <h2>Safety number with {contact?.username ?? userId}</h2>
      <p>
        Compare these digits with the ones on {contact?.username ?? "their"} screen, in person or on a call.
        If they match, your messages are end-to-end encrypted with the right person.
      </p>
      {numbers?.length === 0 && <p>No session yet: exchange a message first.</p>}
      {left.length > 0 && (
        <p className="banner" role="alert" data-testid="verify-left">
          ⚠ Device {left.join(", ")} was not among the numbers you compared (new or changed since): compare
          the numbers below, then mark them as verified again.
        </p>
      )}
      {numbers?.map((n) => (
        <div key={n.deviceId}>
          <div className="meta">
            device {n.deviceId} ·{" "}
            {n.changed ? "changed, not verified" : n.verified ? "verified" : "not verified"}
          </div>
          <div className="digits" data-testid="safety-number">
            {n.safetyNumber}
          </div>
        </div>
      ))}
      {numbers && numbers.length > 0 && (
        <button className="primary" type="button" onClick={() => void verify()}>
          Mark as verified
        </button>
      )}
    </div>
  );
}

function Devices() {
  const [devices, setDevices] = useState<
    { deviceId: number; name?: string | null; lastSeen?: number | null }[]
  >([]);
  const [self, setSelf] = useState(0);
  useEffect(() => {
    void api<{ devices: typeof devices; self: number }>("GET", "/api/devices").then((r) => {
      setDevices(r.devices);
      setSelf(r.self);
    });
  }, []);
  return (
    <div className="panel">
      <h2>Devices</h2>
      {devices.map((d) => (
        <div key={d.deviceId} data-testid="device">
          Device {d.deviceId} {d.name ? `(${d.name})` : ""} {d.deviceId === self ? "· this browser" : ""}
        </div>
      ))}
    </div>
  );
}

function AccountPanel({ username, onErased }: { username: string; onErased: () => void }) {
  const [password, setPassword] = useState("");
  const [result, setResult] = useState<{
    receipt: unknown;
    check: { valid: boolean; failed?: string; reason?: string };
  }>();
  const [error, setError] = useState("");
  const exportData = async () => {
    setError("");
    try {
      const data = await api("GET", "/api/export");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(
        new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }),
      );
      // Named as the CLI names it (usernames are a-z 0-9 _ . -): two accounts' exports stay apart.
      link.download = `clearbox-export-${username}.json`;
      link.click();
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const erase = async (event: FormEvent) => {
    event.preventDefault();
    setError("");
    try {
      setResult(await api("POST", "/api/erase", { password }));
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return (
    <div className="panel">
      <h2>Your data</h2>
      <button type="button" onClick={() => void exportData()}>
        Download my data (export)
      </button>
      <h2>Erase my account</h2>
      <p>
        Everything the server holds about you is deleted, and this device's keys and history with it; you get
        a receipt signed by the server. Save it if you want to keep it.
      </p>
      <form onSubmit={(e) => void erase(e)} style={{ display: "flex", gap: 8 }}>
        <input
          aria-label="erase password"
          type="password"
          placeholder="password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
        <button className="danger" type="submit">
          Erase
        </button>
      </form>
      {error && <p className="error">{error}</p>}
      {result && (
        <div data-testid="receipt">
          <p data-testid="receipt-check">
            {result.check.valid
              ? "Receipt verified: signed with the key this server publishes."
              : `Receipt NOT valid: ${result.check.failed} check failed (${result.check.reason})`}
          </p>
          <pre>{JSON.stringify(result.receipt, null, 2)}</pre>
          <button type="button" onClick={onErased}>
            Done
          </button>
        </div>
      )}
    </div>
  );
}
