import pLimit from "p-limit";
import type { ActorBehavior, ActorContext } from "./actor.ts";
import { ActorError } from "./actor-error.ts";
import {
  type Clock,
  type DeviceSockets,
  type EnvelopeLog,
  type EnvelopeRef,
  envelopeKey,
  type OfflineQueue,
  type SocketRef,
  type StoredEnvelope,
} from "./ports.ts";

/** Envelopes already durable in the log, for this user's devices. */
export interface DeliverMessage {
  type: "deliver";
  envelopes: StoredEnvelope[];
}

/** One group ciphertext for many users: each user actor takes its own devices from `devices`. */
export interface DeliverGroupMessage {
  type: "deliver.group";
  envelope: Omit<StoredEnvelope, "recipientUser" | "recipientDevice">;
  /** userId → the devices this envelope was logged for. */
  devices: Record<string, number[]>;
}

/** A device's socket opened: hold live envelopes until its offline queue is drained. */
export interface DeviceConnectMessage {
  type: "device.connect";
  deviceId: number;
  gatewayNode: string;
  connectionId: string;
  /**
   * The socket's gateway reads the queue again when asked (`device.drained` answered `again`, the
   * `drain` command). Absent from nodes of earlier versions, which would ignore both.
   */
  drainAgain?: boolean;
}

/**
 * The device drained its offline queue: deliver live from now on. Answered `{ live, again }`:
 * `again` asks the gateway to read the queue once more first (something went back to it meanwhile).
 */
export interface DeviceDrainedMessage {
  type: "device.drained";
  deviceId: number;
  gatewayNode: string;
  connectionId: string;
  /** As in `DeviceConnectMessage`: absent from nodes of earlier versions. */
  drainAgain?: boolean;
}

/** A device's socket closed. */
export interface DeviceDisconnectMessage {
  type: "device.disconnect";
  deviceId: number;
  gatewayNode: string;
  connectionId: string;
  /**
   * Envelopes the socket's drain had taken from the offline queue, not acked, and gave back to it
   * when it ended (before this message was sent). Absent: none (a vanished push, an older node).
   */
  requeued?: number;
  /**
   * Sent by a surviving node on behalf of a socket whose node went away without this disconnect
   * (killed, frozen, cut off): what that socket's drain held went back to the queue when the broker
   * dropped the node's connection, how many is not known. Taken as `requeued` > 0. Absent from
   * nodes of earlier versions.
   */
  nodeGone?: boolean;
}

/** A device acknowledged envelopes (already recorded in the log by the gateway), each by id and sender device. */
export interface DeviceAckMessage {
  type: "ack";
  deviceId: number;
  envelopes: EnvelopeRef[];
}

/** A device was removed from the account: forget it and drop its queue. */
export interface DeviceRemovedMessage {
  type: "device.removed";
  deviceId: number;
}

/**
 * A device's offline queue holds nothing for it any more (its drain read it to the end and the
 * device acked everything, or the idle-queue sweep found it empty): remove the queue unless the
 * log still has envelopes queued for the device.
 */
export interface QueueEmptiedMessage {
  type: "queue.emptied";
  deviceId: number;
}

/** Erasure: close every socket of the user and stop the actor. */
export interface EraseMessage {
  type: "erase";
  erasureId: string;
}

/**
 * Erasure of another user (the fence, on every node): drop what this actor holds from or to
 * `userId` (pushed and unacked, or waiting to be flushed); the answer counts what was dropped.
 */
export interface ErasePeerMessage {
  type: "erase.peer";
  userId: string;
}

/**
 * Sent by the actor to itself: flush the offline devices' envelopes gathered meanwhile. It queues
 * behind the delivers already in the mailbox, so a burst for an offline device costs one broker
 * confirm and one log update instead of one per message.
 */
export interface FlushDueMessage {
  type: "flush.due";
}

/**
 * Sent by the actor to itself while it recovers: read the log once for every device that got
 * delivers meanwhile, instead of once per deliver.
 */
export interface RecoveryReadMessage {
  type: "recovery.read";
}

/**
 * Sent by the actor to itself when a push it did not wait for failed (the socket's node is not a
 * member, or the transfer was refused): that connection is taken as gone, and the device's socket
 * is looked up again (`relearn`) before its pending envelopes go to its offline queue: the node
 * may have been unreachable only for a moment, with the socket still open.
 */
export interface PushFailedMessage {
  type: "push.failed";
  deviceId: number;
  connectionId: string;
}

/** Everything a user actor handles. */
export type UserMessage =
  | FlushDueMessage
  | RecoveryReadMessage
  | PushFailedMessage
  | DeliverMessage
  | DeliverGroupMessage
  | DeviceConnectMessage
  | DeviceDrainedMessage
  | DeviceDisconnectMessage
  | DeviceAckMessage
  | DeviceRemovedMessage
  | QueueEmptiedMessage
  | EraseMessage
  | ErasePeerMessage;

/** Ports a user actor uses; `src/` provides them. */
export interface UserActorPorts {
  log: EnvelopeLog;
  offline: OfflineQueue;
  sockets: DeviceSockets;
  clock: Clock;
  /**
   * How long after activation a deliver is taken as a wake-up and the envelopes are read from the
   * log instead: while rings converge after a crash, a sender may still route an envelope to the
   * dead owner's queue while its later ones already come here, and only the log has them in order.
   * About three membership TTLs.
   */
  recoveryMs: number;
  /**
   * True for a user whose erasure has started (the erasure fence). Envelopes from them are
   * neither held, pushed nor flushed; an actor of such a user does nothing but close its sockets
   * on `erase` and stop, so no late message can re-create its offline queues. Default: nobody.
   */
  fenced?: (userId: string) => boolean;
}

/** How many finished envelopes an activation remembers, to ignore late or repeated delivers. */
const RECENTLY_DONE = 4096;

/**
 * Pushes an activation hands to the transport without waiting for their confirms; past this many
 * unconfirmed, a deliver waits for the oldest. Waiting for every push's confirm before the next
 * deliver capped a user's delivery rate at one broker confirm per message (docs/BENCHMARKS.md
 * "Three nodes, stop 26"); the bound keeps what a slow broker leaves in a node's memory at this many
 * transfers' worth per actor, and slows the actor (hence its senders' `accepted`) when it is reached.
 */
const PUSHES_IN_FLIGHT = 32;

/** How long a user actor waits before reading the log again after a failed read (ms). */
const RETRY_MS = 500;

/**
 * How long a user actor waits before looking again for a device's socket that a presence lease
 * names but that did not answer (ms): its node unreachable for a moment, or the socket closing.
 */
const RELEARN_RETRY_MS = 1_000;

/**
 * How many sockets' status (`DeviceSockets.status`, each up to the node link's ask timeout) one
 * activation or one `flush.due` asks at once. Asked one at a time, a frozen node that is still a
 * ring member held the actor (and every message in its mailbox) one ask timeout per lease naming it.
 */
const STATUS_ASKS_AT_ONCE = 16;

type SocketStatus = Awaited<ReturnType<DeviceSockets["status"]>>;

/** How long an activation keeps trying a read of the presence leases or the log that fails (ms). */
const ACTIVATION_RETRY_MS = 10_000;

/**
 * Runs a read again, RETRY_MS apart, while it fails, for up to ACTIVATION_RETRY_MS, then throws its
 * last error. An activation that failed at once during a restart of Redis or the database would
 * refuse its mail and leave the envelopes that woke it `pending` in the log until some later
 * message or reconnect activates the user again; waiting out a short outage delivers them.
 */
async function whileUnreachable<R>(read: () => Promise<R>): Promise<R> {
  const deadline = Date.now() + ACTIVATION_RETRY_MS;
  for (;;) {
    try {
      return await read();
    } catch (error) {
      if (Date.now() + RETRY_MS > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

/** Close code for sockets of an erased account. */
export const ERASED_CLOSE_CODE = 4410;

interface Connected extends SocketRef {
  /** False while the device drains its offline queue: live envelopes wait. */
  live: boolean;
  /**
   * The queue got envelopes back while this socket was draining it (a replaced socket's drain
   * ended): its `device.drained` is answered `again`, and it reads the queue once more first.
   */
  recheck?: boolean;
  /** Envelopes (`envelopeKey`) pushed live to this socket before it was sent to drain again: not pushed twice. */
  pushed?: Set<string>;
  /**
   * Its gateway reads the queue again when asked. False for a socket on a node of an earlier
   * version (during a rolling restart), which would ignore the request and stay held: such a
   * socket is left as before. A socket found by an activation is taken to be able to.
   */
  canDrainAgain: boolean;
}

/**
 * The actor of one user. Holds, per device, the envelopes accepted for it and not yet acked:
 * pushes them to the device's socket (on whichever node holds it), and flushes them to the
 * device's offline queue when it is not connected. The log stays the source of truth: a new
 * activation rebuilds this state from it and from the presence leases.
 */
export class UserActor implements ActorBehavior<UserMessage, unknown> {
  /** deviceId → its open socket. */
  readonly devices = new Map<number, Connected>();
  // The collections below are made on first use: an activation kept by an idle socket (connect,
  // drain, nothing sent) never fills them, and five empty ones per user were memory for nothing at
  // tens of thousands of sockets. Each getter makes its collection; paths that only read go through
  // the field (`?.`), so they allocate nothing.
  private pendingByDevice: Map<number, Map<string, StoredEnvelope>> | undefined;
  private doneIds: Set<string> | undefined;
  private flushDueDevices: Set<number> | undefined;
  private recoveryDueDevices: Set<number> | undefined;
  private selfToldTypes: Set<(FlushDueMessage | RecoveryReadMessage)["type"]> | undefined;
  /** Pushes handed to the transport and not confirmed yet, oldest first (see PUSHES_IN_FLIGHT). */
  private unconfirmedPushes: Promise<void>[] | undefined;
  /** Until then (clock ms), delivers are wake-ups and the log is read; see UserActorPorts.recoveryMs. */
  private recoveringUntil = 0;
  /** Devices whose socket a lease names but did not answer, looked for again when the timer fires. */
  private relearnDue: Set<number> | undefined;
  private relearnTimer: ReturnType<typeof setTimeout> | undefined;

  /** deviceId → unacked envelopes by `envelopeKey` (id and sender device), in acceptance order. */
  private get pending(): Map<number, Map<string, StoredEnvelope>> {
    this.pendingByDevice ??= new Map();
    return this.pendingByDevice;
  }

  /**
   * Envelopes this activation already pushed and saw acked, or handed to an offline queue
   * (`<device>/<id>`, bounded): a late or repeated deliver must not send them again.
   */
  private get done(): Set<string> {
    this.doneIds ??= new Set();
    return this.doneIds;
  }

  /** Devices with envelopes to flush to their offline queue when `flush.due` comes round. */
  private get flushDue(): Set<number> {
    this.flushDueDevices ??= new Set();
    return this.flushDueDevices;
  }

  /** Devices whose delivers arrived during recovery, read from the log at `recovery.read`. */
  private get recoveryDue(): Set<number> {
    this.recoveryDueDevices ??= new Set();
    return this.recoveryDueDevices;
  }

  /** Messages this actor has told itself and not yet handled (at most one of each). */
  private get selfTold(): Set<(FlushDueMessage | RecoveryReadMessage)["type"]> {
    this.selfToldTypes ??= new Set();
    return this.selfToldTypes;
  }

  constructor(
    readonly userId: string,
    private readonly ports: UserActorPorts,
  ) {}

  private fenced(userId: string): boolean {
    return this.ports.fenced?.(userId) ?? false;
  }

  async onActivate(ctx: ActorContext): Promise<void> {
    // Being erased: read nothing, hold nothing (a hold would lead to a flush, which declares queues).
    if (this.fenced(this.userId)) return;
    this.recoveringUntil = this.ports.clock.now() + this.ports.recoveryMs;
    // A socket still draining its offline queue must not get live envelopes ahead of queued ones.
    const sockets = await whileUnreachable(() => this.ports.sockets.open(this.userId));
    for (const [socket, status] of await this.statuses(sockets)) {
      if (status === "live" || status === "pending")
        this.devices.set(socket.deviceId, { ...socket, live: status === "live", canDrainAgain: true });
    }
    const undelivered = await whileUnreachable(() =>
      this.ports.log.undelivered(this.userId, { state: "pending" }),
    );
    const touched = this.hold(undelivered);
    for (const deviceId of touched.keys())
      await this.dispatch(deviceId, [...(this.pending.get(deviceId)?.values() ?? [])], ctx);
  }

  /**
   * Leaves once its pushes are confirmed: a handoff's next owner pushes the same pending envelopes,
   * and they must not overtake this activation's. A failed one is left to the log (the next
   * activation pushes or flushes what is still pending).
   */
  async onPassivate(): Promise<void> {
    if (this.unconfirmedPushes) await Promise.all(this.unconfirmedPushes);
  }

  async receive(message: UserMessage, ctx: ActorContext): Promise<unknown> {
    if (message.type !== "erase" && this.fenced(this.userId)) {
      // The user is being erased: whatever arrives (a late deliver, disconnect, flush) is dropped.
      this.devices.clear();
      this.pendingByDevice?.clear();
      this.flushDueDevices?.clear();
      this.recoveryDueDevices?.clear();
      this.forgetRelearn();
      ctx.stop("erased");
      return { erased: true };
    }
    switch (message.type) {
      case "deliver":
        return this.deliver(message.envelopes, ctx);
      case "deliver.group": {
        const devices = message.devices[this.userId] ?? [];
        return this.deliver(
          devices.map((recipientDevice) => ({
            ...message.envelope,
            recipientUser: this.userId,
            recipientDevice,
          })),
          ctx,
        );
      }
      case "recovery.read": {
        this.selfTold.delete(message.type);
        const devices = [...this.recoveryDue];
        this.recoveryDue.clear();
        const fromLog: StoredEnvelope[] = [];
        try {
          for (const device of devices) {
            fromLog.push(...(await this.ports.log.undelivered(this.userId, { device, state: "pending" })));
          }
        } catch (error) {
          // The log is unreachable (a database restart): those envelopes are only there, so read
          // again shortly rather than leave them pending until some later activation.
          for (const device of devices) this.recoveryDue.add(device);
          this.tellSelfLater({ type: "recovery.read" }, ctx);
          throw error;
        }
        return this.take(fromLog, ctx);
      }
      case "flush.due": {
        this.selfTold.delete(message.type);
        let flushed = 0;
        const due = [...this.flushDue];
        for (const deviceId of due) this.flushDue.delete(deviceId);
        // Connected meanwhile: its pending envelopes are pushed once it has drained its queue.
        const unknown = due.filter((deviceId) => !this.devices.has(deviceId));
        const leased = await this.leasedStatuses(unknown);
        for (const deviceId of unknown) {
          const found = await this.relearn(deviceId, leased.get(deviceId) ?? []);
          if (found === "held") continue;
          // A lease names a socket that did not answer: it may be open, and would never read a
          // queue flushed now. Held here (and pending in the log) until it answers or its lease goes.
          if (found === "unreachable") {
            this.relearnLater(deviceId, ctx);
            continue;
          }
          flushed += await this.flush(deviceId);
        }
        return { flushed };
      }
      case "push.failed": {
        const device = this.devices.get(message.deviceId);
        if (device?.connectionId === message.connectionId) this.devices.delete(message.deviceId);
        // Connected again meanwhile: `flush.due` leaves it to that socket's drain and pushes.
        this.flushDue.add(message.deviceId);
        this.tellSelf({ type: "flush.due" }, ctx);
        return { flushed: 0 };
      }
      case "device.connect":
        // Already known from this activation's start (same socket): keep what it knows.
        if (this.devices.get(message.deviceId)?.connectionId === message.connectionId) {
          return { devices: this.devices.size, known: true };
        }
        this.devices.set(message.deviceId, {
          deviceId: message.deviceId,
          nodeId: message.gatewayNode,
          connectionId: message.connectionId,
          live: false,
          canDrainAgain: message.drainAgain === true,
        });
        return { devices: this.devices.size, known: false };
      case "device.drained": {
        const device = this.devices.get(message.deviceId);
        if (device?.connectionId !== message.connectionId) return { live: false };
        device.canDrainAgain = message.drainAgain === true;
        // Envelopes went back to the queue while it drained: it reads the queue again first.
        if (device.recheck && device.canDrainAgain) {
          device.recheck = false;
          return { live: false, again: true };
        }
        // Pushed already (the activation found it live): pushing the pending set again would repeat it.
        if (device.live) return { live: true };
        device.live = true;
        const pushed = device.pushed;
        device.pushed = undefined;
        const held = [...(this.pendingByDevice?.get(message.deviceId)?.values() ?? [])];
        await this.dispatch(
          message.deviceId,
          pushed ? held.filter((e) => !pushed.has(envelopeKey(e))) : held,
          ctx,
        );
        return { live: true };
      }
      case "device.disconnect": {
        const current = this.devices.get(message.deviceId);
        // A reconnect may have overtaken this disconnect: only forget the socket it names. The
        // closed socket's drain gave back what it held to the queue just now (or, its node gone,
        // when the broker dropped that node's connection), which the current socket may have read
        // past already: it reads the queue again.
        if (current?.connectionId !== message.connectionId) {
          const requeued = (message.requeued ?? 0) > 0 || message.nodeGone === true;
          if (current && requeued) await this.drainAgain(message.deviceId, current, ctx);
          return { flushed: 0 };
        }
        this.devices.delete(message.deviceId);
        return { flushed: await this.flush(message.deviceId) };
      }
      case "ack": {
        const pending = this.pendingByDevice?.get(message.deviceId);
        for (const acked of message.envelopes) {
          const key = envelopeKey(acked);
          if (pending?.delete(key)) this.remember(message.deviceId, key);
        }
        if (pending?.size === 0) this.pendingByDevice?.delete(message.deviceId);
        return { pending: pending?.size ?? 0 };
      }
      case "device.removed":
        this.devices.delete(message.deviceId);
        this.pendingByDevice?.delete(message.deviceId);
        this.flushDueDevices?.delete(message.deviceId);
        this.forgetRelearn(message.deviceId);
        await this.ports.offline.purge(this.userId, message.deviceId);
        return { removed: true };
      case "queue.emptied":
        return { removed: await this.removeQueue(message.deviceId) };
      case "erase.peer": {
        let dropped = 0;
        for (const [deviceId, pending] of this.pendingByDevice ?? []) {
          for (const [key, envelope] of pending) {
            if (envelope.senderUser !== message.userId) continue;
            pending.delete(key);
            dropped++;
          }
          if (pending.size === 0) this.pendingByDevice?.delete(deviceId);
        }
        return { dropped };
      }
      case "erase":
        this.forgetRelearn();
        await this.ports.sockets.closeAll(this.userId, ERASED_CLOSE_CODE, "account erased");
        this.devices.clear();
        this.pendingByDevice?.clear();
        ctx.stop("erased");
        return { erased: true };
      default:
        throw new ActorError("invalid", "unknown user actor message");
    }
  }

  /**
   * Adds envelopes to the pending sets, skipping those already held or done (by id and sender
   * device: another sender's envelope with the same id is another envelope); returns the new ones per device.
   */
  private hold(envelopes: readonly StoredEnvelope[]): Map<number, StoredEnvelope[]> {
    const added = new Map<number, StoredEnvelope[]>();
    for (const envelope of envelopes) {
      if (this.fenced(envelope.senderUser)) continue;
      let pending = this.pending.get(envelope.recipientDevice);
      if (!pending) {
        pending = new Map();
        this.pending.set(envelope.recipientDevice, pending);
      }
      const key = envelopeKey(envelope);
      if (pending.has(key) || this.doneIds?.has(`${envelope.recipientDevice}/${key}`)) continue;
      pending.set(key, envelope);
      const list = added.get(envelope.recipientDevice);
      if (list) list.push(envelope);
      else added.set(envelope.recipientDevice, [envelope]);
    }
    return added;
  }

  private async deliver(
    envelopes: readonly StoredEnvelope[],
    ctx: ActorContext,
  ): Promise<{ devices: number }> {
    // A recovery read still to come (one failed and is retried) also has this deliver's older
    // envelopes: pushing this one first would overtake them.
    if (this.ports.clock.now() < this.recoveringUntil || (this.recoveryDueDevices?.size ?? 0) > 0) {
      // Recovering: take the log's order (acceptance order) rather than the order messages arrive
      // in. The read waits behind the delivers already in the mailbox, so a burst costs one read.
      for (const envelope of envelopes) this.recoveryDue.add(envelope.recipientDevice);
      this.tellSelf({ type: "recovery.read" }, ctx);
      return { devices: 0 };
    }
    return this.take(envelopes, ctx);
  }

  /** Holds the envelopes not seen yet and dispatches them per device; returns how many devices got some. */
  private async take(envelopes: readonly StoredEnvelope[], ctx: ActorContext): Promise<{ devices: number }> {
    const added = this.hold(envelopes);
    for (const [deviceId, fresh] of added) await this.dispatch(deviceId, fresh, ctx);
    return { devices: added.size };
  }

  /**
   * Live device: push. Draining: hold. Not connected (or its socket vanished): flush to its queue,
   * after the delivers already waiting in the mailbox (`flush.due`). They are in the log meanwhile.
   *
   * A push is not waited for (up to PUSHES_IN_FLIGHT of them): pushes to one socket leave through
   * the outbox in the order they were made, and one that fails comes back as `push.failed`, which
   * takes the connection as gone and, unless the socket is found again, flushes the device's
   * pending envelopes. The envelopes stay pending (in this actor and in the log) until the device
   * acks them.
   */
  private async dispatch(deviceId: number, all: StoredEnvelope[], ctx: ActorContext): Promise<void> {
    const envelopes = this.unfenced(all);
    if (envelopes.length === 0) return;
    const device = this.devices.get(deviceId);
    if (device && !device.live) return;
    if (device) {
      await this.push(device, envelopes, ctx);
      return;
    }
    this.flushDue.add(deviceId);
    this.tellSelf({ type: "flush.due" }, ctx);
  }

  /**
   * Hands a push to the transport without waiting for its confirm, unless PUSHES_IN_FLIGHT are
   * unconfirmed already: then waits for the oldest. A push that fails is told back as `push.failed`.
   */
  private async push(device: Connected, envelopes: StoredEnvelope[], ctx: ActorContext): Promise<void> {
    const { deviceId, connectionId } = device;
    // A socket on this node takes the push before this returns: nothing to wait for or track. Its
    // pushes were written at the call before too (the local `push` ran at once, only its answer
    // came later), so the order of writes to the socket is unchanged.
    const here = this.ports.sockets.pushHere?.(device, this.userId, envelopes);
    if (here === true) return;
    const failed: PushFailedMessage = { type: "push.failed", deviceId, connectionId };
    if (here === false) {
      this.tellFailed(failed, ctx);
      return;
    }
    this.unconfirmedPushes ??= [];
    const unconfirmed = this.unconfirmedPushes;
    const push = this.ports.sockets.push(device, this.userId, envelopes).then(
      (pushed) => (pushed ? undefined : this.tellFailed(failed, ctx)),
      () => this.tellFailed(failed, ctx),
    );
    unconfirmed.push(push);
    void push.then(() => {
      unconfirmed.splice(unconfirmed.indexOf(push), 1);
      if (unconfirmed.length === 0 && this.unconfirmedPushes === unconfirmed)
        this.unconfirmedPushes = undefined;
    });
    if (unconfirmed.length > PUSHES_IN_FLIGHT) await unconfirmed[0];
  }

  /** Refused (the node is stopping): the envelopes stay pending in the log for the next activation. */
  private tellFailed(message: PushFailedMessage, ctx: ActorContext): void {
    void ctx.system.tell(ctx.key, message).catch(() => undefined);
  }

  /**
   * Queues `message` behind what is already in this actor's mailbox, unless it is queued already.
   * Not awaited: during a handoff the gate holds an actor's own messages until it has stopped.
   * Refused (the node is stopping): the envelopes stay pending in the log, and the next
   * activation, wherever it is, rebuilds them.
   */
  private tellSelf(message: FlushDueMessage | RecoveryReadMessage, ctx: ActorContext): void {
    if (this.selfToldTypes?.has(message.type)) return;
    this.selfTold.add(message.type);
    void ctx.system.tell(ctx.key, message).catch(() => this.selfTold.delete(message.type));
  }

  /** Like `tellSelf`, after RETRY_MS: for a read that failed because the log was unreachable. */
  private tellSelfLater(message: RecoveryReadMessage, ctx: ActorContext): void {
    if (this.selfTold.has(message.type)) return;
    this.selfTold.add(message.type);
    const timer = setTimeout(() => {
      this.selfTold.delete(message.type);
      this.tellSelf(message, ctx);
    }, RETRY_MS);
    timer.unref?.();
  }

  /**
   * Looks the device's socket up in the presence leases once more before its envelopes go to the
   * offline queue, which a connected device reads only when it connects: an activation in the
   * moment between a Redis restart and the leases being written again found none, and a push that
   * failed took an open socket for gone. A socket found is held for (`held`): one still draining
   * its queue is pushed to at its `device.drained`. A live one is pushed the pending envelopes,
   * unless the log has envelopes `queued` for the device (flushed while no activation knew the
   * socket, or unread by the log's answer): then it is sent to read its queue again first and
   * reports drained like a draining one, so they are not left in a queue a live socket never
   * reads again, nor overtaken. `unreachable`: a lease names a socket whose node did not answer,
   * or that did not take the push or drain command. `none`: no lease for the device, or only
   * leases of sockets their node answered are closed (a lease its disconnect failed to delete).
   * `leased`: the device's leased sockets with their status, asked beforehand (`leasedStatuses`),
   * taken in the leases' order.
   */
  private async relearn(
    deviceId: number,
    leased: readonly (readonly [SocketRef, SocketStatus])[],
  ): Promise<"held" | "unreachable" | "none"> {
    let unanswered = false;
    for (const [socket, status] of leased) {
      // Its node says it is closed: a lease its disconnect did not delete (nothing to wait for).
      if (status === "gone") continue;
      if (status === "unreachable") {
        unanswered = true;
        continue;
      }
      const device: Connected = { ...socket, live: false, canDrainAgain: true };
      this.devices.set(deviceId, device);
      if (status === "pending") return "held";
      if (await this.takenBack(device)) return "held";
      if (this.devices.get(deviceId) === device) this.devices.delete(deviceId);
      unanswered = true;
    }
    return unanswered ? "unreachable" : "none";
  }

  /**
   * Reads the presence leases once and asks the status of every leased socket of `deviceIds` at
   * once (STATUS_ASKS_AT_ONCE at a time), so sockets on a frozen node cost one ask timeout per
   * round, not one per socket. Per device: its sockets with their status, in the leases' order. An
   * unreadable lease set is none (as before: the device counts as not connected).
   */
  private async leasedStatuses(
    deviceIds: readonly number[],
  ): Promise<Map<number, [SocketRef, SocketStatus][]>> {
    const byDevice = new Map<number, [SocketRef, SocketStatus][]>();
    if (deviceIds.length === 0) return byDevice;
    const wanted = new Set(deviceIds);
    const sockets = await this.ports.sockets.open(this.userId).catch(() => [] as SocketRef[]);
    for (const [socket, status] of await this.statuses(sockets.filter((s) => wanted.has(s.deviceId)))) {
      const list = byDevice.get(socket.deviceId);
      if (list) list.push([socket, status]);
      else byDevice.set(socket.deviceId, [[socket, status]]);
    }
    return byDevice;
  }

  /**
   * Asks each socket's status, STATUS_ASKS_AT_ONCE at a time; returns them paired, in the order
   * given. An ask that fails is `unreachable`.
   */
  private async statuses(sockets: readonly SocketRef[]): Promise<[SocketRef, SocketStatus][]> {
    const ask = (socket: SocketRef) =>
      this.ports.sockets.status(socket, this.userId).catch(() => "unreachable" as const);
    if (sockets.length <= 1) return Promise.all(sockets.map(async (s) => [s, await ask(s)]));
    const limit = pLimit(STATUS_ASKS_AT_ONCE);
    return Promise.all(
      sockets.map((s) => limit(async (): Promise<[SocketRef, SocketStatus]> => [s, await ask(s)])),
    );
  }

  /**
   * Drops a device (or, without one, every device) from the next relearn round, and stops the
   * retry timer when no device is left for it: a removed device or an erased user must not be
   * looked for (nor an actor told) again.
   */
  private forgetRelearn(deviceId?: number): void {
    if (deviceId === undefined) this.relearnDue = undefined;
    else this.relearnDue?.delete(deviceId);
    if (this.relearnDue?.size) return;
    this.relearnDue = undefined;
    if (this.relearnTimer) clearTimeout(this.relearnTimer);
    this.relearnTimer = undefined;
  }

  /**
   * A live socket this activation did not know (`relearn`): pushed the device's pending envelopes
   * (but those of a sender fenced meanwhile, an erasure started) when its queue owes it nothing,
   * else sent to read the queue again (held until it reports drained). False when the socket did
   * not take the push or the drain command.
   */
  private async takenBack(device: Connected): Promise<boolean> {
    const { deviceId } = device;
    const queued = await this.ports.log
      .undelivered(this.userId, { device: deviceId, state: "queued", limit: 1 })
      .catch(() => undefined);
    if (queued?.length !== 0) return this.ports.sockets.drainAgain(device, this.userId).catch(() => false);
    device.live = true;
    // A sender fenced since these were held is skipped, as in `dispatch` and `flush`.
    const pending = this.unfenced(this.pendingByDevice?.get(deviceId)?.values() ?? []);
    if (pending.length === 0) return true;
    return this.ports.sockets.push(device, this.userId, pending).catch(() => false);
  }

  /**
   * Looks for the device's socket again after RELEARN_RETRY_MS (`flush.due`), one timer per
   * activation for every such device. The tell activates the user again if this activation has
   * gone meanwhile; the next one rebuilds the envelopes from the log.
   */
  private relearnLater(deviceId: number, ctx: ActorContext): void {
    this.relearnDue ??= new Set();
    this.relearnDue.add(deviceId);
    if (this.relearnTimer) return;
    this.relearnTimer = setTimeout(() => {
      this.relearnTimer = undefined;
      for (const device of this.relearnDue ?? []) this.flushDue.add(device);
      this.relearnDue = undefined;
      this.tellSelf({ type: "flush.due" }, ctx);
    }, RELEARN_RETRY_MS);
    this.relearnTimer.unref?.();
  }

  /**
   * The device's offline queue got envelopes back (a replaced socket's drain ended) after its
   * current socket may have read it: a live device must not stay live with envelopes waiting in a
   * queue it reads only when it connects (docs/MESSAGING.md, "A drain that ends after another
   * began"). A socket still draining reads the queue again before its `device.drained` is taken; a
   * live one is held (new envelopes wait, as during a first drain) and told to drain again, and
   * what it was pushed already is not pushed again when it reports drained. A socket that is gone
   * meanwhile: its pending envelopes go to the queue like any offline device's.
   */
  private async drainAgain(deviceId: number, device: Connected, ctx: ActorContext): Promise<void> {
    if (!device.canDrainAgain) return;
    if (!device.live) {
      device.recheck = true;
      return;
    }
    device.live = false;
    device.pushed = new Set(this.pendingByDevice?.get(deviceId)?.keys() ?? []);
    if (await this.ports.sockets.drainAgain(device, this.userId).catch(() => false)) return;
    if (this.devices.get(deviceId) !== device) return;
    this.devices.delete(deviceId);
    this.flushDue.add(deviceId);
    this.tellSelf({ type: "flush.due" }, ctx);
  }

  /** The envelopes whose sender is not fenced (an erasure of theirs started), in their order. */
  private unfenced(envelopes: Iterable<StoredEnvelope>): StoredEnvelope[] {
    const kept: StoredEnvelope[] = [];
    for (const e of envelopes) if (!this.fenced(e.senderUser)) kept.push(e);
    return kept;
  }

  /** Moves a device's unacked envelopes to its durable offline queue; returns how many. */
  private async flush(deviceId: number): Promise<number> {
    const pending = this.pendingByDevice?.get(deviceId);
    if (!pending || pending.size === 0) return 0;
    // A sender fenced since these were held: theirs are not queued (erasure sweeps what was).
    const envelopes = this.unfenced(pending.values());
    if (envelopes.length === 0) {
      this.pending.delete(deviceId);
      return 0;
    }
    await this.ports.offline.flush(this.userId, deviceId, envelopes);
    await this.ports.log.markQueued(this.userId, deviceId, envelopes);
    this.pending.delete(deviceId);
    for (const e of envelopes) this.remember(deviceId, envelopeKey(e));
    return envelopes.length;
  }

  /**
   * Removes the device's offline queue when nothing in it is still owed to the device. Runs in this
   * actor's mailbox, where no flush to the same queue can run (flushes happen only here), so a
   * flush and a removal never interleave; `if-empty` refuses a queue that got messages from a
   * flush of an earlier activation. `if-empty` counts only ready messages, so envelopes another
   * drain took and has not acked yet (a replaced socket still draining) would be lost with the
   * queue: the log's `queued` rows, which stay until the device acks, are what keep it.
   */
  private async removeQueue(deviceId: number): Promise<boolean> {
    const owed = await this.ports.log.undelivered(this.userId, {
      device: deviceId,
      state: "queued",
      limit: 1,
    });
    if (owed.length > 0) return false;
    return this.ports.offline.remove(this.userId, deviceId);
  }

  /** Records an envelope (`envelopeKey`) as done for this activation, forgetting the oldest beyond the bound. */
  private remember(deviceId: number, key: string): void {
    const done = this.done;
    done.add(`${deviceId}/${key}`);
    // Every ack of a fan-out lands here: under the bound, no iterator is made.
    if (done.size <= RECENTLY_DONE) return;
    // Sets iterate in insertion order: the first entries are the oldest.
    for (const oldest of done) {
      if (this.done.size <= RECENTLY_DONE) break;
      this.done.delete(oldest);
    }
  }
}

/** Factory to register as kind `user`. */
export function userActorFactory(ports: UserActorPorts): (id: string) => UserActor {
  return (id) => new UserActor(id, ports);
}
