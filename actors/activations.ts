import { Actor, type ActorFactory, type ActorHost } from "./actor.ts";
import { UnknownActorKindError } from "./actor-error.ts";

/**
 * The actors living on one node: the registered kinds' factories and the table of activations
 * by key. Routing activates an actor on its first message here; placement passivates the ones
 * that moved away or went idle; an activation leaves the table once it has stopped.
 */
export class Activations {
  private readonly kinds = new Map<string, ActorFactory>();
  private readonly table = new Map<string, Actor>();
  private startedCount = 0;

  constructor(
    private readonly host: ActorHost,
    private readonly mailboxCapacity: number,
  ) {}

  /** Registers the factory for keys `<kind>:<id>`; throws when `kind` contains ":". */
  register(kind: string, factory: ActorFactory): void {
    if (kind.includes(":")) throw new Error(`actor kind must not contain ":" (got ${kind})`);
    this.kinds.set(kind, factory);
  }

  /** Activations currently in the table (including those passivating). */
  get size(): number {
    return this.table.size;
  }

  /** Activations started since the node was created. */
  get started(): number {
    return this.startedCount;
  }

  /**
   * Activations per kind (the key's part before ":"), and the messages waiting in their mailboxes:
   * in total and in the fullest one. O(activations): for a metrics scrape, not a hot path.
   */
  census(): { byKind: Map<string, number>; queued: number; maxQueued: number } {
    const byKind = new Map<string, number>();
    for (const kind of this.kinds.keys()) byKind.set(kind, 0);
    let queued = 0;
    let maxQueued = 0;
    for (const [key, actor] of this.table) {
      const colon = key.indexOf(":");
      const kind = colon < 0 ? key : key.slice(0, colon);
      byKind.set(kind, (byKind.get(kind) ?? 0) + 1);
      const waiting = actor.queued;
      queued += waiting;
      if (waiting > maxQueued) maxQueued = waiting;
    }
    return { byKind, queued, maxQueued };
  }

  get(key: string): Actor | undefined {
    return this.table.get(key);
  }

  has(key: string): boolean {
    return this.table.has(key);
  }

  keys(): IterableIterator<string> {
    return this.table.keys();
  }

  values(): IterableIterator<Actor> {
    return this.table.values();
  }

  /**
   * Creates and starts the activation of `key` with its kind's factory; the activation takes mail
   * at once and processes it after `onActivate`. Throws UnknownActorKindError for an unregistered kind.
   */
  activate(key: string): Actor {
    const colon = key.indexOf(":");
    const factory = this.kinds.get(colon < 0 ? key : key.slice(0, colon));
    if (!factory) throw new UnknownActorKindError(key);
    const actor = new Actor(key, factory(key.slice(colon + 1), key), this.host, this.mailboxCapacity);
    this.table.set(key, actor);
    this.startedCount++;
    void actor.activate();
    return actor;
  }

  /** Drops a stopped activation, unless a newer activation of its key took its place already. */
  remove(actor: Actor): void {
    if (this.table.get(actor.key) === actor) this.table.delete(actor.key);
  }

  /** Forgets every activation without stopping it (crash simulation). */
  clear(): void {
    this.table.clear();
  }
}
