import type { DeliverGroupMessage } from "../../actors/index.ts";
import type { Logger } from "../observability/logger.ts";
import type { EnvelopeLog } from "./envelope-log.ts";

/** How often each node looks for group messages left unexpanded (ms). */
export const GROUP_SWEEP_INTERVAL_MS = 2000;

/**
 * How old an unexpanded group message must be for the sweep to take it (ms): the node that
 * accepted it expands it within milliseconds unless it died (or its database was away) meanwhile.
 */
export const GROUP_SWEEP_AGE_MS = 2000;

export interface GroupExpansionSweepDeps {
  log: EnvelopeLog;
  /** Tells the user actors of `userIds` a `deliver.group` (ActorSystem.tellMany). */
  tell(userIds: string[], message: DeliverGroupMessage): Promise<void>;
  logger?: Logger;
  intervalMs?: number;
  ageMs?: number;
}

/**
 * The recovery of group messages a node stored and did not expand (it died between `accepted` and
 * the expansion): every GROUP_SWEEP_INTERVAL_MS, and once at start, each node expands those older
 * than GROUP_SWEEP_AGE_MS (`EnvelopeLog.expandStale`; the log's row locks keep two nodes from
 * writing the same rows) and tells the recipients' user actors about the rows it wrote, oldest
 * first, since the dead node may have died before telling them. An actor that already holds the
 * envelope skips it; one activated meanwhile reads it from the log.
 */
export class GroupExpansionSweep {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private running: Promise<unknown> | undefined;
  private stopped = false;

  constructor(private readonly deps: GroupExpansionSweepDeps) {}

  /** Runs once now, then every interval until `stop`. */
  start(): void {
    this.stopped = false;
    const tick = () => {
      this.running = this.runOnce()
        .catch((error) => this.deps.logger?.warn({ err: error }, "group expansion sweep failed; will retry"))
        .finally(() => {
          if (this.stopped) return;
          this.timer = setTimeout(tick, this.deps.intervalMs ?? GROUP_SWEEP_INTERVAL_MS);
          this.timer.unref?.();
        });
    };
    tick();
  }

  /** One pass; resolves with how many group messages it expanded rows of. */
  async runOnce(): Promise<number> {
    const expanded = await this.deps.log.expandStale(this.deps.ageMs ?? GROUP_SWEEP_AGE_MS);
    for (const { envelope, devices } of expanded) {
      // Durable now: an actor this does not reach reads the rows when it next activates.
      await this.deps
        .tell(Object.keys(devices), { type: "deliver.group", envelope, devices })
        .catch(() => {});
    }
    if (expanded.length > 0) {
      this.deps.logger?.info({ groupMessages: expanded.length }, "expanded group messages left unexpanded");
    }
    return expanded.length;
  }

  /** Cancels the schedule and waits for a pass in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
