import { type ActorFactory, type ActorSystem, USER_KIND, userKey } from "../../actors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import type { MessagingService } from "../messaging/service.ts";
import type { Logger } from "../observability/logger.ts";
import type { Gateway } from "./gateway.ts";

/** The pinned actor kind (`fence:<nodeId>`) through which an erasure fences a user on every node. */
export const FENCE_KIND = "fence";

/** How long one node may take to fence a user before the erasure step fails and is retried (ms). */
const FENCE_TIMEOUT_MS = 30_000;

/** What fencing a user did on the nodes, for the receipt. */
export interface FenceResult {
  /** Ring members that fenced the user (all of them, or the step failed). */
  nodes: number;
  /** Envelopes from the user dropped from memory: user actors' unacked ones and drains' unacked deliveries. */
  dropped: number;
}

/**
 * The erasure fence across the cluster (issue 12). `fenceEverywhere` asks the pinned `fence`
 * actor of every ring member (this node's directly) to fence a user, and resolves once all of them
 * have; on each node `fenceHere`:
 * 1. adds the user to the node's `ErasureFence` (sends to or from them, group adds, key fetches,
 *    logins and socket upgrades are refused from here on; actors, drains and the gateway write
 *    nothing for them);
 * 2. waits for the sends that passed their checks before (`MessagingService.fenced`);
 * 3. closes the user's sockets on the node (4410) and waits for their pending work, then drops the
 *    user's envelopes that drains under way took and the device has not acked;
 * 4. asks every user actor active on the node to drop the envelopes from the user it holds.
 * A separate pinned actor from `gateway:<nodeId>`: fencing waits on user actors, which may be
 * waiting on a gateway actor themselves.
 */
export class FenceLink {
  constructor(
    private readonly deps: {
      nodeId: string;
      actors: ActorSystem;
      fence: ErasureFence;
      messaging: MessagingService;
      gateway: () => Gateway | undefined;
      logger: Logger;
    },
  ) {}

  /** The behaviour of this node's pinned fence actor. */
  readonly actorFactory: ActorFactory = () => ({
    receive: (command: { type: "fence"; userId: string }) => this.fenceHere(command.userId),
  });

  /** Fences the user on every ring member; rejects when one does not answer (the caller retries). */
  async fenceEverywhere(userId: string): Promise<FenceResult> {
    const { actors, nodeId } = this.deps;
    // Here first: this node refuses at once, whatever the others take.
    let dropped = await this.fenceHere(userId);
    const others = actors.ringMembers().filter((n) => n !== nodeId);
    const answers = await Promise.all(
      others.map((node) =>
        actors.ask<number>(
          `${FENCE_KIND}:${node}`,
          { type: "fence", userId },
          { timeoutMs: FENCE_TIMEOUT_MS },
        ),
      ),
    );
    for (const n of answers) dropped += n;
    return { nodes: others.length + 1, dropped };
  }

  /** Fences the user on this node (see the class); returns the envelopes it dropped. */
  async fenceHere(userId: string): Promise<number> {
    const { fence, messaging, actors, logger } = this.deps;
    fence.add(userId);
    await messaging.fenced(userId);
    let dropped = (await this.deps.gateway()?.fenceUser(userId)) ?? 0;
    const prefix = `${USER_KIND}:`;
    const local = actors.activeKeys().filter((key) => key.startsWith(prefix) && key !== userKey(userId));
    const replies = await Promise.all(
      local.map((key) =>
        actors.ask<{ dropped?: number }>(key, { type: "erase.peer", userId }).catch((error) => {
          // Moved or stopped meanwhile: a new activation reads the log, which the sweep empties.
          logger.debug({ err: error }, "erase.peer not delivered");
          return { dropped: 0 };
        }),
      ),
    );
    for (const reply of replies) dropped += reply.dropped ?? 0;
    return dropped;
  }
}
