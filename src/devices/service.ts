import { randomInt } from "node:crypto";
import { and, asc, eq, inArray, sql } from "drizzle-orm";
import type { AuditTrail } from "../audit/types.ts";
import type { Db } from "../db/index.ts";
import { accounts, devices } from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import { MAX_DEVICE_ID } from "../protocol/ids.ts";

/** A new device's first token generation is below this (2^30): far from the int column's 2^31 - 1. */
const FIRST_GENERATION_BOUND = 2 ** 30;

export interface DeviceInfo {
  deviceId: number;
  name: string | null;
  createdAt: number;
  lastSeen: number;
}

/** Called after a device is removed, so other stores (keys, queues, sockets) can let go of it. */
export type DeviceRemovedListener = (userId: string, deviceId: number) => Promise<void> | void;

/** Devices of an account: allocation of ids, listing, removal, and token revocation by generation. */
export class DeviceService {
  private readonly removedListeners: DeviceRemovedListener[] = [];
  private readonly addedListeners: ((userId: string, deviceId: number) => Promise<void> | void)[] = [];

  constructor(
    private readonly db: Db,
    private readonly audit?: AuditTrail,
  ) {}

  /** Registers a listener run after every new device; `create` resolves once it has. */
  onAdded(listener: (userId: string, deviceId: number) => Promise<void> | void): void {
    this.addedListeners.push(listener);
  }

  /** Registers a listener run after every device removal. */
  onRemoved(listener: DeviceRemovedListener): void {
    this.removedListeners.push(listener);
  }

  /**
   * Creates a device with the smallest free id; `conflict` when all 127 are taken. Its token
   * generation starts at a random number (1 to 2^30, room for a billion revocations in the int
   * column): ids are reused, and a removed device's access tokens, still unexpired, name the id and
   * the generation it had; had the new device started at 0 as well, they would be valid for it.
   */
  async create(userId: string, registrationId: number, name: string | null): Promise<number> {
    return this.db
      .transaction(async (tx) => {
        // Serialises concurrent logins of one account so two devices never pick the same free id.
        await tx.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId)).for("update");
        const taken = await tx
          .select({ deviceId: devices.deviceId })
          .from(devices)
          .where(eq(devices.userId, userId))
          .orderBy(asc(devices.deviceId));
        let deviceId = 1;
        for (const row of taken) {
          if (row.deviceId !== deviceId) break;
          deviceId++;
        }
        if (deviceId > MAX_DEVICE_ID) {
          throw new DomainError("conflict", `an account can have at most ${MAX_DEVICE_ID} devices`);
        }
        const tokenGeneration = randomInt(1, FIRST_GENERATION_BOUND);
        await tx.insert(devices).values({ userId, deviceId, registrationId, name, tokenGeneration });
        return deviceId;
      })
      .then(async (deviceId) => {
        for (const listener of this.addedListeners) await listener(userId, deviceId);
        return deviceId;
      });
  }

  /** The device's current token generation, or undefined when it does not exist. */
  async tokenGeneration(userId: string, deviceId: number): Promise<number | undefined> {
    const [row] = await this.db
      .select({ generation: devices.tokenGeneration })
      .from(devices)
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
    return row?.generation;
  }

  /**
   * The token generation of every device of these users, in one query (`user_id IN (...)`, the
   * primary key's first column): what `SocketRevalidation` compares its sockets with. A device that
   * does not exist has no row. At most a few thousand users per call (one bind parameter each).
   */
  async tokenGenerations(
    userIds: readonly string[],
  ): Promise<{ userId: string; deviceId: number; generation: number }[]> {
    if (userIds.length === 0) return [];
    return this.db
      .select({ userId: devices.userId, deviceId: devices.deviceId, generation: devices.tokenGeneration })
      .from(devices)
      .where(inArray(devices.userId, [...userIds]));
  }

  /** Marks the device as seen now. */
  async touch(userId: string, deviceId: number): Promise<void> {
    await this.db
      .update(devices)
      .set({ lastSeen: sql`now()` })
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
  }

  /** Invalidates every access token issued to the device so far. */
  async revokeTokens(userId: string, deviceId: number): Promise<void> {
    await this.db
      .update(devices)
      .set({ tokenGeneration: sql`${devices.tokenGeneration} + 1` })
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)));
  }

  /** The account's devices, oldest id first. */
  async list(userId: string): Promise<DeviceInfo[]> {
    const rows = await this.db
      .select()
      .from(devices)
      .where(eq(devices.userId, userId))
      .orderBy(asc(devices.deviceId));
    return rows.map((r) => ({
      deviceId: r.deviceId,
      name: r.name,
      createdAt: r.createdAt.getTime(),
      lastSeen: r.lastSeen.getTime(),
    }));
  }

  /** Removes the device and, by cascade, its refresh tokens; `not_found` when there is no such device. */
  async remove(userId: string, deviceId: number): Promise<void> {
    const removed = await this.db
      .delete(devices)
      .where(and(eq(devices.userId, userId), eq(devices.deviceId, deviceId)))
      .returning({ deviceId: devices.deviceId });
    if (removed.length === 0) throw new DomainError("not_found", `device ${deviceId} does not exist`);
    // Recorded once the row is gone, before the follow-ups: should one of them fail (the request
    // then answers 500 and a retry 404), the removal itself still happened and is in the trail.
    await this.audit?.record({
      action: "device.remove",
      actor: { user: userId },
      subject: userId,
      details: { deviceId },
    });
    for (const listener of this.removedListeners) await listener(userId, deviceId);
  }
}
