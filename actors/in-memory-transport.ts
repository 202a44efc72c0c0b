import { UnroutableError } from "./actor-error.ts";
import type { Frame, FrameHandler, Transport } from "./transport.ts";

interface Inbox {
  ready: Frame[][];
  consumer: FrameHandler | undefined;
  /** Changes whenever the consumer does, so a dead consumer's late completions are ignored. */
  generation: number;
  unacked: Set<Frame[]>;
}

/** Shared inboxes for in-memory transports; one per simulated cluster, never a module singleton. */
export class TransportHub {
  readonly inboxes = new Map<string, Inbox>();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Transport without a broker: the embedded single-node default, or several nodes in one process
 * sharing a hub. Frames are copied through JSON so nodes never share objects.
 */
export class InMemoryTransport implements Transport {
  private readonly prefetch = 256;

  constructor(
    readonly nodeId: string,
    private readonly hub: TransportHub = new TransportHub(),
  ) {}

  async start(handler: FrameHandler): Promise<void> {
    const inbox = this.inbox(this.nodeId, true) as Inbox;
    this.attach(inbox, handler);
  }

  async send(nodeId: string, frames: Frame[]): Promise<void> {
    const inbox = this.inbox(nodeId, false);
    if (!inbox) throw new UnroutableError(nodeId);
    inbox.ready.push(JSON.parse(JSON.stringify(frames)) as Frame[]);
    this.pump(inbox);
  }

  async adopt(nodeId: string, handler: FrameHandler, shouldStop: () => boolean): Promise<boolean> {
    const inbox = this.inbox(nodeId, false);
    if (!inbox) return true;
    // Still consumed (its node alive after all, or another adopter): left alone (Transport.adopt).
    if (inbox.consumer) return false;
    this.attach(inbox, handler);
    while (inbox.ready.length > 0 || inbox.unacked.size > 0) {
      if (shouldStop()) {
        this.detach(inbox);
        return false;
      }
      await sleep(10);
    }
    this.hub.inboxes.delete(nodeId);
    return true;
  }

  async stop(): Promise<boolean> {
    const inbox = this.inbox(this.nodeId, false);
    if (!inbox) return true;
    inbox.consumer = undefined;
    while (inbox.unacked.size > 0) await sleep(5);
    if (inbox.ready.length > 0) return false;
    this.hub.inboxes.delete(this.nodeId);
    return true;
  }

  async abort(): Promise<void> {
    const inbox = this.inbox(this.nodeId, false);
    if (inbox) this.detach(inbox);
  }

  private inbox(nodeId: string, create: boolean): Inbox | undefined {
    let inbox = this.hub.inboxes.get(nodeId);
    if (!inbox && create) {
      inbox = { ready: [], consumer: undefined, generation: 0, unacked: new Set() };
      this.hub.inboxes.set(nodeId, inbox);
    }
    return inbox;
  }

  private attach(inbox: Inbox, handler: FrameHandler): void {
    inbox.consumer = handler;
    inbox.generation++;
    this.pump(inbox);
  }

  /** Like a consumer dying: unacknowledged transfers go back to the front of the inbox. */
  private detach(inbox: Inbox): void {
    inbox.consumer = undefined;
    inbox.generation++;
    inbox.ready.unshift(...inbox.unacked);
    inbox.unacked.clear();
  }

  private pump(inbox: Inbox): void {
    while (inbox.consumer && inbox.ready.length > 0 && inbox.unacked.size < this.prefetch) {
      const batch = inbox.ready.shift() as Frame[];
      const generation = inbox.generation;
      inbox.unacked.add(batch);
      inbox.consumer(batch).then(
        () => {
          if (inbox.generation !== generation) return;
          inbox.unacked.delete(batch);
          this.pump(inbox);
        },
        () => {
          if (inbox.generation !== generation) return;
          inbox.unacked.delete(batch);
          inbox.ready.push(batch);
          setTimeout(() => this.pump(inbox), 50);
        },
      );
    }
  }
}
