import type { Logger } from "../observability/logger.ts";
import { CloseCode } from "../protocol/index.ts";
import type { DeviceConnection } from "./connection.ts";
import type { SocketRegistry } from "./socket-registry.ts";

/** Sockets checked per database query (their distinct users are the query's bind parameters). */
export const REVALIDATION_BATCH = 1000;

/** What one pass found: sockets checked, and those closed as revoked, removed or erased. */
export interface RevalidationReport {
  checked: number;
  closed: number;
}

/** What the revalidation needs: this node's sockets and the devices' current token generations. */
export interface SocketRevalidationDeps {
  registry: SocketRegistry;
  /**
   * The current token generation of every device of these users, keyed `userId.deviceId`
   * (`SessionService.deviceGenerations`); a device without an entry does not exist any more.
   */
  generations(userIds: readonly string[]): Promise<Map<string, number>>;
  /** True for a user whose erasure has started (the erasure fence). */
  fenced(userId: string): boolean;
  logger: Logger;
  /** Sockets per query; default `REVALIDATION_BATCH`. */
  batchSize?: number;
}

/**
 * The bound on a revocation whose close never reached a socket (its node cut off from the others'
 * node links, a close that failed, a lease missing from Redis): each pass compares every socket of
 * this node with its device's token generation in the database, `batchSize` sockets per query, and
 * closes a socket whose token names an older generation (4401, `revoked`) or whose device is gone
 * (4404, `deviceRemoved`; 4410 when its account is being erased). The gateway runs a pass every
 * WS_REVALIDATE_INTERVAL_SECONDS and when the node regains Redis; one timer per node, none per socket.
 *
 * A socket re-authenticated (`auth` frame) while its batch was being read is left for the next
 * pass: its generation changed since the batch took it, and the read may predate the new token.
 * Otherwise any difference means revoked: generations only grow, and a device id given to a new
 * device starts at a random generation (`DeviceService.create`).
 */
export class SocketRevalidation {
  private readonly batchSize: number;

  constructor(private readonly deps: SocketRevalidationDeps) {
    this.batchSize = deps.batchSize ?? REVALIDATION_BATCH;
  }

  /**
   * One pass over the sockets open now, one query per batch, one batch after another with a turn
   * of the event loop between them (docs/BENCHMARKS.md, "Socket revalidation"). A batch
   * whose query fails is skipped (logged once per pass) and checked again at the next pass.
   */
  async run(): Promise<RevalidationReport> {
    const sockets = [...this.deps.registry.values()];
    const report: RevalidationReport = { checked: 0, closed: 0 };
    let failure: unknown;
    for (let start = 0; start < sockets.length; start += this.batchSize) {
      // Between batches, the event loop serves sockets: PGlite answers on this thread, and without a
      // turn of the loop a whole pass over 15,000 sockets held it for hundreds of ms.
      if (start > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      const batch = sockets.slice(start, start + this.batchSize).filter((c) => !c.isClosed() && !c.closing);
      if (batch.length === 0) continue;
      const taken = batch.map((conn) => conn.ws.data.generation);
      let current: Map<string, number>;
      try {
        current = await this.deps.generations([...new Set(batch.map((c) => c.principal.userId))]);
      } catch (error) {
        failure ??= error;
        continue;
      }
      report.checked += batch.length;
      batch.forEach((conn, i) => {
        if (this.closeIfStale(conn, taken[i] as number, current.get(conn.key))) report.closed++;
      });
    }
    if (failure !== undefined) {
      this.deps.logger.warn({ err: failure }, "socket revalidation could not read token generations");
    }
    if (report.closed > 0) this.deps.logger.info({ ...report }, "closed sockets whose tokens were revoked");
    return report;
  }

  /** Closes `conn` if its token (of generation `taken` when read) is no longer its device's. */
  private closeIfStale(conn: DeviceConnection, taken: number, current: number | undefined): boolean {
    if (conn.isClosed() || conn.closing || conn.ws.data.generation !== taken) return false;
    if (current === taken) return false;
    if (current !== undefined) conn.close(CloseCode.revoked, "tokens revoked");
    else if (this.deps.fenced(conn.principal.userId)) conn.close(CloseCode.erased, "account erased");
    else conn.close(CloseCode.deviceRemoved, "device removed");
    return true;
  }
}
