import { and, asc, eq, gt, or } from "drizzle-orm";
import type { Db } from "../db/index.ts";
import { devices } from "../db/schema.ts";
import type { DeviceRef, OfflineQueue } from "./offline-queue.ts";

/** Devices looked up per page (one passive declare each). */
const PAGE = 500;

/** What one sweep saw. */
export interface IdleQueueSweep {
  /** Devices whose queue was looked at. */
  devices: number;
  /** Queues found existing and empty; their user actors were asked to remove them. */
  idle: number;
}

/**
 * Finds offline queues that exist but hold nothing (left by versions before queues followed the
 * backlog, or missed by a drain that ended before its report) and tells each device's user actor
 * `queue.emptied`, which removes the queue unless the log still owes the device envelopes. Walks
 * the devices table in key order, PAGE at a time; `stopped` ends it early (shutdown).
 */
export async function sweepIdleQueues(deps: {
  db: Db;
  offline: Pick<OfflineQueue, "idleQueues">;
  /** Tells the device's user actor its queue is empty (MessagingService.queueEmptied). */
  queueEmptied: (device: DeviceRef) => Promise<void>;
  stopped?: () => boolean;
}): Promise<IdleQueueSweep> {
  const seen: IdleQueueSweep = { devices: 0, idle: 0 };
  let after: DeviceRef | undefined;
  for (;;) {
    if (deps.stopped?.()) return seen;
    const page = await deps.db
      .select({ userId: devices.userId, deviceId: devices.deviceId })
      .from(devices)
      .where(
        after
          ? or(
              gt(devices.userId, after.userId),
              and(eq(devices.userId, after.userId), gt(devices.deviceId, after.deviceId)),
            )
          : undefined,
      )
      .orderBy(asc(devices.userId), asc(devices.deviceId))
      .limit(PAGE);
    if (page.length === 0) return seen;
    seen.devices += page.length;
    const idle = await deps.offline.idleQueues(page);
    for (const device of idle) await deps.queueEmptied(device);
    seen.idle += idle.length;
    after = page[page.length - 1];
    if (page.length < PAGE) return seen;
  }
}
