import { lt } from "drizzle-orm";
import type { AuditPruneResult } from "../audit/service.ts";
import type { Db } from "../db/index.ts";
import { handedOutPreKeys, oidcLogoutTokens, oidcSignInCodes, refreshTokens } from "../db/schema.ts";
import { HANDED_OUT_PRE_KEY_DAYS } from "../keys/service.ts";
import type { EnvelopeLog } from "../messaging/envelope-log.ts";
import type { IdleQueueSweep } from "../messaging/queue-sweep.ts";
import type { Logger } from "../observability/logger.ts";

const DAY_MS = 86_400_000;
/** The first run comes this soon after start-up (or one interval, if shorter), so restarts never skip it. */
const FIRST_RUN_MAX_MS = 60_000;

/** What one retention pass removed, per store. */
export interface RetentionReport {
  envelopes: number;
  refreshTokens: number;
  /** Expired one-time sign-in codes (identity provider), and logout-token ids past their replay window. */
  oidcSignInCodes: number;
  oidcLogoutTokens: number;
  /** Records of one-time keys handed out more than HANDED_OUT_PRE_KEY_DAYS ago (`handed_out_pre_keys`). */
  handedOutPreKeys: number;
  auditEntries: number;
  /** Device removals whose follow-ups were finished by this pass, and those that failed again (null without `finishDeviceRemovals`). */
  deviceRemovals: { finished: number; failed: number } | null;
  /** The idle offline-queue sweep, run in the first pass after start-up only (null in later passes). */
  idleQueues: IdleQueueSweep | null;
  /** Pending erasures whose node is gone, taken over by this pass (null without `resumeErasures`). */
  erasuresResumed: number | null;
  /** Backup directories older than BACKUP_RETENTION_DAYS and crashed backups' remains removed (null without `pruneBackups`). */
  backups: number | null;
  cutoffs: { envelopes: string; refreshTokens: string; audit: string };
  ms: number;
}

export interface RetentionDeps {
  db: Db;
  log: Pick<EnvelopeLog, "purgeBefore">;
  audit: { prune(before: Date): Promise<AuditPruneResult> };
  retentionDays: number;
  auditRetentionDays: number;
  intervalMs: number;
  logger: Logger;
  clock?: () => number;
  /** Hears every finished pass (metrics). */
  onReport?: (report: RetentionReport) => void;
  /**
   * Removes offline queues that exist with nothing in them (queues left by versions before queues
   * followed the backlog); `stopped` ends it early. Run once, in the first pass after start-up.
   */
  sweepIdleQueues?: (stopped: () => boolean) => Promise<IdleQueueSweep>;
  /**
   * Runs again the follow-ups of device removals left unfinished (a node died or a backing service
   * was away mid-removal: the device's log rows, queue and sockets; DeviceService.finishRemovals).
   */
  finishDeviceRemovals?: () => Promise<{ finished: number; failed: number }>;
  /**
   * Takes over pending erasures no live node runs (`ErasureService.resumePending`): the backstop for
   * a node whose departure this node's membership did not see (`ActorSystem.onMembersGone` runs it
   * at once otherwise).
   */
  resumeErasures?: () => Promise<number>;
  /**
   * Removes backups older than BACKUP_RETENTION_DAYS from BACKUP_DIR (`BackupService.prune`, given
   * the pass's clock in ms); resolves with how many directories went.
   */
  pruneBackups?: (nowMs: number) => number | Promise<number>;
}

/**
 * Storage limitation (GDPR Art. 5(1)(e)) on one node: every interval, removes envelopes older than
 * RETENTION_DAYS, expired refresh tokens and sign-in codes, logout-token ids past their replay
 * window, records of one-time keys handed out more than HANDED_OUT_PRE_KEY_DAYS ago, audit
 * entries older than AUDIT_RETENTION_DAYS and backups in BACKUP_DIR older than
 * BACKUP_RETENTION_DAYS; finishes device removals and takes over
 * erasures that a node gone mid-way left unfinished.
 * Every step is a plain conditional delete (the audit prune is serialised by the chain lock),
 * so several nodes running it at once only split the work. RabbitMQ and MongoDB expire on their
 * own (x-message-ttl / x-expires, TTL index). The first pass after start-up also sweeps idle
 * offline queues (`sweepIdleQueues`): queues that exist with nothing in them, as older versions
 * left one per device that was ever offline with a message.
 */
export class RetentionJob {
  private timer?: ReturnType<typeof setTimeout>;
  private running?: Promise<RetentionReport | undefined>;
  private stopped = false;
  private swept = false;
  private readonly clock: () => number;

  constructor(private readonly deps: RetentionDeps) {
    this.clock = deps.clock ?? Date.now;
  }

  /** Schedules the first run shortly after start-up, then one per interval. */
  start(): void {
    this.stopped = false;
    this.schedule(Math.min(this.deps.intervalMs, FIRST_RUN_MAX_MS));
  }

  /** Cancels the schedule and waits for a run in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One pass over every store; logs one structured line with what it removed. */
  async runOnce(): Promise<RetentionReport> {
    const started = performance.now();
    const now = this.clock();
    const envelopesBefore = now - this.deps.retentionDays * DAY_MS;
    const auditBefore = new Date(now - this.deps.auditRetentionDays * DAY_MS);
    const envelopes = await this.deps.log.purgeBefore(envelopesBefore);
    // Spent tokens stay until they expire: presenting one again is how a copied token is detected.
    const tokens = await this.deps.db
      .delete(refreshTokens)
      .where(lt(refreshTokens.expiresAt, new Date(now)))
      .returning({ tokenHash: refreshTokens.tokenHash });
    // Also swept whenever new ones are written; this pass catches what a quiet server leaves behind.
    const codes = await this.deps.db
      .delete(oidcSignInCodes)
      .where(lt(oidcSignInCodes.expiresAt, new Date(now)))
      .returning({ codeHash: oidcSignInCodes.codeHash });
    const jtis = await this.deps.db
      .delete(oidcLogoutTokens)
      .where(lt(oidcLogoutTokens.expiresAt, new Date(now)))
      .returning({ jti: oidcLogoutTokens.jti });
    // What an upload retried after fetches took its keys would be checked against: no retry comes
    // this late (src/keys/service.ts, HANDED_OUT_PRE_KEY_DAYS).
    const handedOut = await this.deps.db
      .delete(handedOutPreKeys)
      .where(lt(handedOutPreKeys.handedOutAt, new Date(now - HANDED_OUT_PRE_KEY_DAYS * DAY_MS)))
      .returning({ keyId: handedOutPreKeys.keyId });
    const audit = await this.deps.audit.prune(auditBefore);
    const deviceRemovals = (await this.deps.finishDeviceRemovals?.()) ?? null;
    const erasuresResumed = (await this.deps.resumeErasures?.()) ?? null;
    const backups = (await this.deps.pruneBackups?.(now)) ?? null;
    let idleQueues: IdleQueueSweep | null = null;
    if (this.deps.sweepIdleQueues && !this.swept) {
      this.swept = true;
      idleQueues = await this.deps.sweepIdleQueues(() => this.stopped);
    }
    const report: RetentionReport = {
      envelopes,
      refreshTokens: tokens.length,
      oidcSignInCodes: codes.length,
      oidcLogoutTokens: jtis.length,
      handedOutPreKeys: handedOut.length,
      auditEntries: audit.removed,
      deviceRemovals,
      idleQueues,
      erasuresResumed,
      backups,
      cutoffs: {
        envelopes: new Date(envelopesBefore).toISOString(),
        refreshTokens: new Date(now).toISOString(),
        audit: auditBefore.toISOString(),
      },
      ms: Math.round(performance.now() - started),
    };
    this.deps.logger.info({ retention: report }, "retention run");
    this.deps.onReport?.(report);
    return report;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(async () => {
      this.running = this.runOnce().catch((err) => {
        this.deps.logger.error({ err }, "retention run failed");
        return undefined;
      });
      await this.running;
      this.running = undefined;
      this.schedule(this.deps.intervalMs);
    }, delayMs);
    this.timer.unref?.();
  }
}
