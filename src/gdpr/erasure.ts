import { randomBytes, randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { and, count, eq, isNull, or, sql } from "drizzle-orm";
import type Redis from "ioredis";
import { settledWithin } from "../../actors/index.ts";
import type { AuditEvent, AuditTrail } from "../audit/types.ts";
import { type Db, rowsOf } from "../db/index.ts";
import {
  accounts,
  blocks,
  devices,
  erasures,
  groupInvitations,
  groupMembers,
  handedOutPreKeys,
  oidcIdentities,
  oidcSignInCodes,
  refreshTokens,
} from "../db/schema.ts";
import { DomainError } from "../errors/index.ts";
import type { ErasureFence } from "../fence/index.ts";
import { successionEvents } from "../groups/service.ts";
import { keepAnAdmin, lockGroups, type Succession } from "../groups/succession.ts";
import type { EnvelopeLog } from "../messaging/envelope-log.ts";
import type { OfflineQueue } from "../messaging/offline-queue.ts";
import type { Presence } from "../messaging/presence.ts";
import type { Logger } from "../observability/logger.ts";
import type { SignedReceipt } from "../protocol/erasure-receipt.ts";
import type { RateLimiter } from "../ratelimit/index.ts";
import { deleteMatching, globLiteral } from "../redis/delete-matching.ts";
import { ErasureLedger } from "./ledger.ts";
import type { ReceiptSigner } from "./receipts.ts";

/**
 * Advisory lock class (two-key `pg_advisory_xact_lock`) under which one user's erasure requests
 * look for a pending job and insert one (`ErasureService.start`).
 */
const ERASURE_START_LOCK_CLASS = 0x6572_6173; // "eras"

/** The first 32 bits of a user id (a server-made UUID), as a signed int4 key; users sharing one only wait for each other. */
function idBits(userId: string): number {
  return Number.parseInt(userId.replaceAll("-", "").slice(0, 8), 16) | 0;
}

/** What one step removed, as the receipt states it. */
export interface StepResult {
  removed: number;
  what: string;
}

/** What the job must remember between steps (a crash may come between them); never in the receipt. */
interface Plan {
  devices: number[];
  /** Needed after the account is gone: login-failure counters are keyed by username. */
  username: string | null;
  /** Other users' devices whose offline queues hold envelopes from the erased user. */
  queuedAt: { userId: string; deviceId: number }[];
}

type Steps = Record<string, StepResult> & { plan?: StepResult & Plan };

/**
 * The stores erasure reaches, in order. The fence first: nothing may reach a store for the user
 * while, or after, the rest sweeps. Then the account: its deletion ends every token of the user.
 */
const STEPS = [
  "fence",
  "postgres",
  "history",
  "live",
  "offline_queues",
  "others_queues",
  "redis",
  "audit",
] as const;
type StepName = (typeof STEPS)[number];

/** The live side of erasure: the user's actor and sockets, wherever the ring placed them. */
export interface LiveErasure {
  /**
   * Fences the user on every node of the ring (src/gateway/fence-link.ts): resolves once each one
   * refuses everything to or from the user, has let the sends already past their checks settle,
   * closed the user's sockets and dropped the envelopes from the user that its actors and drains
   * held in memory (`dropped`). Rejects when a node does not answer: the step is retried.
   */
  fence(userId: string): Promise<{ nodes: number; dropped: number }>;
  /** Closes every socket of the user (4410) on every node and stops the user's actor. */
  eraseUser(userId: string, erasureId: string): Promise<void>;
}

/** What erasure needs to forget failed-login counters, which are keyed by username. */
export interface LoginThrottle {
  forgetFailedLogins(username: string): Promise<number>;
}

export interface ErasureDeps {
  db: Db;
  /** This node's id (NODE_ID): the jobs it runs are claimed under it (`erasures.claimed_by`). */
  nodeId: string;
  /**
   * The nodes of the ring now (`ActorSystem.ringMembers`): a pending job claimed by a node not among
   * them is taken over (`resumePending`).
   */
  liveNodes: () => readonly string[];
  log: EnvelopeLog;
  offline: OfflineQueue;
  presence: Presence;
  live: LiveErasure;
  logins: LoginThrottle;
  audit: AuditTrail;
  signer: ReceiptSigner;
  rateLimiter: RateLimiter;
  redis?: Redis;
  redisPrefix: string;
  logger: Logger;
  /** This node's erasure fence: a started erasure fences the user here at once. */
  fence?: ErasureFence;
  /** Tests: called after each completed step; a throw stops the job there, as a crash would. */
  afterStep?: (step: string) => void;
  /** Delay before a failed job's first retry, in ms (default 1,000); each next one doubles, up to 60,000. */
  retryBaseMs?: number;
  /** Called when this node completed a job (metrics). */
  onCompleted?: () => void;
  /** Every requested erasure is recorded here before its job starts (restores replay it). */
  ledger?: ErasureLedger;
  /**
   * True when this node is the only one starting erasures on its database (the embedded default),
   * so every erasure job in it was recorded in `ledger` first; in a cluster each node keeps a
   * ledger of its own and another node's jobs are in another file.
   */
  ledgerCoversDatabase?: boolean;
}

/** The view of a job that `GET /v1/erasures/:id` serves. */
export interface ErasureStatus {
  erasureId: string;
  status: "pending" | "done";
  receipt?: SignedReceipt;
}

/**
 * How log lines name an erasure job: the first 8 hex digits of its id, enough to follow one job
 * through the log and to find its row (`where id::text like '<ref>%'`). Never the whole id: it is
 * the one secret `GET /v1/erasures/:erasureId` asks for (no token) to answer the job's receipt,
 * which is why nginx's access log leaves it out too (docs/GDPR.md); the rest of a random UUID
 * (90 bits) stays unguessable.
 */
export function erasureLogRef(erasureId: string): string {
  return erasureId.slice(0, 8);
}

/**
 * Erasure (GDPR Art. 17) as a durable job: a row in `erasures` records each completed step, so a
 * job interrupted by a crash resumes where it stopped (every step is idempotent), and a finished
 * one carries a signed receipt of what each store removed.
 */
export class ErasureService {
  private readonly running = new Map<string, Promise<void>>();
  private stopped = false;
  /** Aborted by `stop()`: ends the retry backoffs in progress at once. */
  private readonly stopping = new AbortController();

  constructor(private readonly deps: ErasureDeps) {}

  /**
   * Starts (or returns the pending) erasure of a user; `not_found` when there is no such account.
   * Requests made at once (a client's retry, the person and an operator) get one job: each looks for
   * the pending one and inserts it in one transaction holding the user's erasure lock
   * (`ERASURE_START_LOCK_CLASS`), so the second waits for the first and finds its job. Not the
   * account's row: a group creation holds that while it waits for its invitees' locks.
   */
  async start(userId: string, requestedBy: "self" | "admin"): Promise<string> {
    const { db, audit } = this.deps;
    const started = await db.transaction(async (tx) => {
      await tx.execute(
        sql`select pg_advisory_xact_lock(${sql.raw(String(ERASURE_START_LOCK_CLASS))}, ${sql.raw(String(idBits(userId)))})`,
      );
      const [pending] = await tx
        .select({ id: erasures.id })
        .from(erasures)
        .where(and(eq(erasures.userId, userId), eq(erasures.status, "pending")));
      if (pending) return { id: pending.id, fresh: false };
      const [account] = await tx.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId));
      if (!account) throw new DomainError("not_found", "no such user");
      // Before anything else: from here on no restore may bring the account back.
      this.deps.ledger?.record(userId);
      const id = randomUUID();
      // The receipt's subject: random, and written nowhere but in the job and its receipt. The audit
      // pseudonym would link the receipt (readable by anyone with the erasure id) to the person's
      // entries left in the audit log, and through other people's exports to what they did.
      const subject = randomBytes(16).toString("hex");
      // The durable mark of the fence: every node loads pending jobs' users when it starts.
      await tx.insert(erasures).values({
        id,
        userId,
        subject,
        requestedBy,
        status: "pending",
        steps: {},
        claimedBy: this.deps.nodeId,
      });
      return { id, fresh: true };
    });
    const { id } = started;
    if (!started.fresh) return id;
    this.deps.fence?.add(userId);
    await audit.record({
      action: "erasure.requested",
      actor: requestedBy === "self" ? { user: userId } : "admin",
      subject: userId,
      details: { erasureId: id },
    });
    this.launch(id);
    return id;
  }

  /**
   * Erases again every account of the database that the erasure ledger lists: accounts a restored
   * backup brought back. Starts their jobs and waits for them (at most `waitMs`), so the node opens
   * its listeners without them where it can. Returns how many accounts were found.
   */
  async replayLedger(waitMs = 60_000): Promise<number> {
    const ledger = this.deps.ledger;
    if (!ledger) return 0;
    const keys = ledger.keys();
    if (keys.size === 0) {
      await this.warnOfLostLedger(ledger);
      return 0;
    }
    const rows = await this.deps.db.select({ id: accounts.id }).from(accounts);
    const back = rows.filter((row) => keys.has(ErasureLedger.key(row.id)));
    if (back.length === 0) return 0;
    this.deps.logger.warn(
      { accounts: back.length },
      "erased accounts found in the database; erasing them again",
    );
    const jobs = await Promise.all(back.map((row) => this.start(row.id, "admin")));
    const settled = Promise.all(jobs.map((id) => this.settled(id)));
    if (!(await settledWithin(settled, waitMs)))
      this.deps.logger.error(
        { accounts: back.length },
        "replayed erasures still running; they continue in the background",
      );
    return back.length;
  }

  /**
   * An empty ledger beside a database that holds erasure jobs, on a node whose ledger covers its
   * database (`ledgerCoversDatabase`), cannot be the ledger those jobs were recorded in (each
   * request appends its line before its job is written): it was lost or replaced, typically a
   * backup restored into a new DATA_DIR whose default ERASURE_LEDGER_FILE is a new, empty file.
   * An account erased after that backup then comes back without a word; this says so in an
   * `error` line (path and job count only) instead, and the node still starts.
   */
  private async warnOfLostLedger(ledger: ErasureLedger): Promise<void> {
    if (!this.deps.ledgerCoversDatabase) return;
    const [row] = await this.deps.db.select({ jobs: count() }).from(erasures);
    const jobs = Number(row?.jobs ?? 0);
    if (jobs === 0) return;
    this.deps.logger.error(
      { ledger: ledger.path, erasureJobs: jobs },
      "the erasure ledger lists no erasure but the database holds erasure jobs: the ledger was lost or replaced (a restore into a new DATA_DIR with the default ERASURE_LEDGER_FILE?), so an account erased after this database's backup is not erased again; stop the node, set ERASURE_LEDGER_FILE to the ledger kept outside the backups, and start it again",
    );
  }

  /**
   * Takes over and runs here the pending jobs no live node runs: unclaimed ones, this node's own (a
   * job of its previous run under the same NODE_ID, or one it stopped at shutdown) and those claimed
   * by a node no longer in the ring (`liveNodes`: killed, or stopped mid-way). Each is claimed by a
   * compare-and-set on the claim it was read with, so of survivors adopting at once one runs it.
   * Called at start-up, when nodes left the membership (`ActorSystem.onMembersGone`) and by every retention
   * pass; before, only a node's start resumed a job, and one whose node died stayed pending, the
   * user fenced and their data kept, until some node restarted. `gone`: nodes the caller knows are
   * gone though the ring may not show it yet (`onMembersGone`'s). Returns how many it launched.
   */
  async resumePending(gone: readonly string[] = []): Promise<number> {
    const { db, nodeId, logger } = this.deps;
    const live = new Set(this.deps.liveNodes());
    for (const node of gone) live.delete(node);
    const rows = await db
      .select({ id: erasures.id, claimedBy: erasures.claimedBy })
      .from(erasures)
      .where(eq(erasures.status, "pending"));
    let launched = 0;
    for (const { id, claimedBy } of rows) {
      if (this.running.has(id) || this.stopped) continue;
      if (claimedBy !== null && claimedBy !== nodeId && live.has(claimedBy)) continue;
      const [claimed] = await db
        .update(erasures)
        .set({ claimedBy: nodeId })
        .where(
          and(
            eq(erasures.id, id),
            eq(erasures.status, "pending"),
            claimedBy === null ? isNull(erasures.claimedBy) : eq(erasures.claimedBy, claimedBy),
          ),
        )
        .returning({ id: erasures.id });
      if (!claimed) continue;
      if (claimedBy !== null && claimedBy !== nodeId)
        logger.warn(
          { erasure: erasureLogRef(id), from: claimedBy },
          "taking over an erasure whose node is gone",
        );
      this.launch(id);
      launched++;
    }
    return launched;
  }

  async status(erasureId: string): Promise<ErasureStatus | undefined> {
    const [row] = await this.deps.db.select().from(erasures).where(eq(erasures.id, erasureId));
    if (!row) return undefined;
    return {
      erasureId: row.id,
      status: row.status,
      ...(row.receipt ? { receipt: row.receipt as unknown as SignedReceipt } : {}),
    };
  }

  /** Resolves when the job (if running here) has finished or stopped. */
  async settled(erasureId: string): Promise<void> {
    await this.running.get(erasureId);
  }

  /**
   * Stops retrying (node shutdown): a job waiting out its retry backoff ends at once, a job in the
   * middle of a step ends after that step. Then this node's claims on unfinished jobs are released
   * (`claimed_by` set to null), so a survivor adopts them at once (`resumePending`, run when this
   * node leaves the membership) or, with no other node, the next start here does. A release that
   * fails (the database away) is logged; the claim is then taken over once this node is out of the
   * ring, as a dead node's is. `releaseClaims: false` keeps them, as a crash would (`node.abort`).
   */
  async stop(options: { releaseClaims?: boolean } = {}): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    if (this.running.size > 0) this.deps.logger.info({ erasures: this.running.size }, "stopping erasures");
    await Promise.allSettled(this.running.values());
    if (options.releaseClaims === false) return;
    const { db, nodeId, logger } = this.deps;
    try {
      const released = await db
        .update(erasures)
        .set({ claimedBy: null })
        .where(and(eq(erasures.claimedBy, nodeId), eq(erasures.status, "pending")))
        .returning({ id: erasures.id });
      if (released.length > 0) logger.info({ erasures: released.length }, "released unfinished erasures");
    } catch (error) {
      logger.warn({ err: error }, "could not release this node's unfinished erasures");
    }
  }

  private launch(id: string): void {
    if (this.running.has(id)) return;
    const job = this.runWithRetries(id).finally(() => this.running.delete(id));
    this.running.set(id, job);
  }

  private async runWithRetries(id: string): Promise<void> {
    for (let attempt = 0; !this.stopped; attempt++) {
      try {
        await this.run(id);
        return;
      } catch (error) {
        if (error instanceof ClaimLost) {
          this.deps.logger.warn(
            { erasure: erasureLogRef(id) },
            "another node took this erasure over; stopping here",
          );
          return;
        }
        this.deps.logger.error(
          { err: error, erasure: erasureLogRef(id), attempt },
          "erasure step failed; will retry",
        );
        if (error instanceof SimulatedCrash) return;
        const delay = Math.min(60_000, (this.deps.retryBaseMs ?? 1000) * 2 ** attempt);
        await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
      }
    }
  }

  /**
   * Runs the job's remaining steps; running a finished job again changes nothing. Once `stop` was
   * called it returns before the next step, the job left pending.
   */
  async run(id: string): Promise<void> {
    const { db, logger } = this.deps;
    const [job] = await db.select().from(erasures).where(eq(erasures.id, id));
    if (!job || job.status === "done") return;
    const steps = job.steps as Steps;
    const userId = job.userId as string;
    for (const step of STEPS) {
      if (steps[step]) continue;
      // Shutting down: the rest is for the node that adopts the job (its claim is released in `stop`).
      if (this.stopped) return;
      // The plan is read once the user is fenced: no envelope of theirs can reach a queue after it.
      if (step !== "fence" && !steps.plan) {
        const plan = await this.plan(userId);
        await this.saveStep(id, "plan", { removed: 0, what: "plan", ...plan });
        steps.plan = { removed: 0, what: "plan", ...plan };
        this.deps.afterStep?.("plan");
      }
      const result = await this.step(step, userId, id, steps.plan as StepResult & Plan);
      await this.saveStep(id, step, result);
      steps[step] = result;
      logger.info({ erasure: erasureLogRef(id), step, removed: result.removed }, "erasure step done");
      this.deps.afterStep?.(step);
    }
    const completedAt = new Date();
    const stores: Record<string, StepResult> = {};
    for (const step of STEPS) stores[step] = { removed: steps[step].removed, what: steps[step].what };
    const receipt = this.deps.signer.sign({
      erasureId: id,
      subject: job.subject,
      requestedAt: job.createdAt.toISOString(),
      completedAt: completedAt.toISOString(),
      stores,
    });
    // The finished job names nobody: the user id and the plan (other users' ids) go. Only under
    // this node's claim: a node that lost it after its last step leaves the job to the one that
    // took it over, whose receipt and completion are the only ones.
    const [finished] = await db
      .update(erasures)
      .set({
        status: "done",
        userId: null,
        steps: stores,
        receipt: receipt as unknown as Record<string, unknown>,
        completedAt,
        claimedBy: null,
      })
      .where(
        and(eq(erasures.id, id), eq(erasures.status, "pending"), eq(erasures.claimedBy, this.deps.nodeId)),
      )
      .returning({ id: erasures.id });
    if (!finished) throw new ClaimLost(id);
    logger.info({ erasure: erasureLogRef(id) }, "erasure done");
    this.deps.onCompleted?.();
  }

  /**
   * Jobs by state in the database (every node's), and the age in seconds of the oldest pending one
   * (0 when none): what the erasure metrics and the "erasure stuck" alert read.
   */
  async jobStats(): Promise<{ pending: number; done: number; oldestPendingSeconds: number }> {
    const [row] = rowsOf<{ pending: number; done: number; oldest: number | null }>(
      await this.deps.db.execute(sql`
        select count(*) filter (where status = 'pending')::int as pending,
               count(*) filter (where status = 'done')::int as done,
               extract(epoch from now() - min(created_at) filter (where status = 'pending'))::float8 as oldest
        from ${erasures}`),
    );
    return {
      pending: Number(row?.pending ?? 0),
      done: Number(row?.done ?? 0),
      oldestPendingSeconds: Math.max(0, Number(row?.oldest ?? 0)),
    };
  }

  /**
   * Records a finished step unless another runner recorded it first (first result wins), while the
   * job is still claimed by this node; `ClaimLost` when another node took it over meanwhile (this
   * one was out of its ring for a while): the job stops here, the other runs it. `db`: a
   * transaction whose changes are the step's (`erasePostgres`), so they commit with their record.
   */
  private async saveStep(id: string, step: string, result: StepResult, db: Db = this.deps.db) {
    const [held] = await db
      .update(erasures)
      .set({
        steps: sql`case when ${erasures.steps} ? ${step} then ${erasures.steps}
          else ${erasures.steps} || ${JSON.stringify({ [step]: result })}::jsonb end`,
      })
      .where(and(eq(erasures.id, id), eq(erasures.claimedBy, this.deps.nodeId)))
      .returning({ id: erasures.id });
    if (!held) throw new ClaimLost(id);
  }

  private async plan(userId: string): Promise<Plan> {
    const { db } = this.deps;
    const own = await db
      .select({ deviceId: devices.deviceId })
      .from(devices)
      .where(eq(devices.userId, userId));
    const queuedAt = await this.deps.log.queuedRecipientsOf(userId);
    const [account] = await db
      .select({ username: accounts.username })
      .from(accounts)
      .where(eq(accounts.id, userId));
    return {
      devices: own.map((d) => d.deviceId),
      username: account?.username ?? null,
      queuedAt,
    };
  }

  private async step(step: StepName, userId: string, erasureId: string, plan: Plan): Promise<StepResult> {
    switch (step) {
      case "fence": {
        // Every token of the user is refused from now on, on every node (the generation is read
        // from the database on each request); the account itself goes in the next step.
        await this.deps.db
          .update(devices)
          .set({ tokenGeneration: sql`${devices.tokenGeneration} + 1` })
          .where(eq(devices.userId, userId));
        await this.deps.db.delete(refreshTokens).where(eq(refreshTokens.userId, userId));
        const { nodes, dropped } = await this.deps.live.fence(userId);
        return {
          removed: dropped,
          what: `account fenced on ${nodes} node(s) before anything was swept (tokens revoked, sockets closed, sends, group adds, key fetches and sign-ins refused); envelopes from the user dropped from actors' memory and from deliveries not yet acked`,
        };
      }
      case "postgres":
        return this.erasePostgres(userId, erasureId);
      case "history": {
        const removed = await this.deps.log.eraseUser(userId);
        return { removed, what: `envelopes sent by or to the user in the ${this.deps.log.kind} history` };
      }
      case "live": {
        const sockets = (await this.deps.presence.sockets(userId)).length;
        // The actor closes the user's sockets (4410) wherever they are, then stops.
        await this.deps.live.eraseUser(userId, erasureId);
        return { removed: sockets, what: "open sockets closed, user actor stopped" };
      }
      case "offline_queues": {
        let removed = 0;
        for (const deviceId of plan.devices) removed += await this.deps.offline.purge(userId, deviceId);
        return {
          removed,
          what: `messages in the user's ${this.deps.offline.kind} offline queues, queues deleted`,
        };
      }
      case "others_queues": {
        let removed = 0;
        for (const { userId: owner, deviceId } of plan.queuedAt) {
          removed += await this.deps.offline.dropFrom(owner, deviceId, userId);
        }
        return { removed, what: "messages from the user waiting in other users' offline queues" };
      }
      case "redis": {
        const { redis, redisPrefix, presence, rateLimiter } = this.deps;
        let removed = 0;
        if (redis)
          removed += await deleteMatching(redis, `${globLiteral(redisPrefix)}*${globLiteral(userId)}*`);
        else removed += (await presence.eraseUser(userId)) + (await rateLimiter.forget(userId));
        if (plan.username) removed += await this.deps.logins.forgetFailedLogins(plan.username);
        return {
          removed,
          what: redis
            ? "Redis keys naming the user (presence, rate limits)"
            : "in-memory presence and rate limits",
        };
      }
      case "audit":
        return this.eraseAuditKey(userId, erasureId);
    }
  }

  /**
   * The `audit` step: writes `erasure.completed`, then destroys the user's pseudonym key, in one
   * transaction that also records the step on the job (`saveStep`, while this node still holds the
   * claim). A slow node whose claim was lost while it waited (for the audit chain's lock, say) and
   * the node that took the job over both ran the step, each writing its `erasure.completed`; now
   * the run without the claim rolls back (`ClaimLost`), entry and all, so the chain holds one
   * (test/gdpr/erasure-completed-once.test.ts). A trail that cannot write inside a transaction
   * (no `recordIn`) records and forgets, and the step is saved after, as before.
   */
  private async eraseAuditKey(userId: string, erasureId: string): Promise<StepResult> {
    const { db, audit } = this.deps;
    const event: AuditEvent = { action: "erasure.completed", actor: "system", subject: userId, details: {} };
    const what = "audit pseudonym key destroyed: the user's audit entries can no longer be linked to them";
    const { recordIn, forgetSubjectIn } = audit;
    if (!recordIn || !forgetSubjectIn) {
      await audit.record(event);
      return { removed: await audit.forgetSubject(userId), what };
    }
    return db.transaction(async (tx) => {
      // The entry's pseudonym is made from the key, so the key goes after it. The chain's lock,
      // taken here, is held to the commit: what follows is one delete and one update.
      await recordIn.call(audit, tx, [event]);
      const result = { removed: await forgetSubjectIn.call(audit, tx, userId), what };
      await this.saveStep(erasureId, "audit", result, tx);
      return result;
    });
  }

  /**
   * The `postgres` step, in one transaction that also records its result on the job (`saveStep`,
   * while this node still holds the claim): a node taken for gone while it ran the step (slow, not
   * dead) and the survivor that took the job over both ran it, the second finding nothing left,
   * and the slow node's result was lost with its claim, so the signed receipt said `account (0)`.
   * Now a run whose claim was lost rolls back (`ClaimLost`) and the claim holder's run erases and
   * counts (test/gdpr/erasure-slow-node.test.ts).
   */
  private async erasePostgres(userId: string, erasureId: string): Promise<StepResult> {
    const { db, audit } = this.deps;
    const result = await db.transaction(async (tx) => {
      // The account's row before anything is read: a group creation or an invitation's acceptance
      // holds it (FOR NO KEY UPDATE, `GroupService`) until its membership is committed, so the
      // memberships below include it, and its group gets the succession below. Read before, such a
      // membership committed meanwhile went by cascade, and a group the user had just made was left
      // with no member and no admin, its invitations pending. NO KEY UPDATE, as theirs: a foreign
      // key check (KEY SHARE) of a transaction holding one of the user's groups, an admin's
      // invitation, does not wait for it, so the group lock below cannot wait for that transaction.
      await tx.select({ id: accounts.id }).from(accounts).where(eq(accounts.id, userId)).for("no key update");
      const [{ n: deviceCount }] = await tx
        .select({ n: count() })
        .from(devices)
        .where(eq(devices.userId, userId));
      const [{ n: tokenCount }] = await tx
        .select({ n: count() })
        .from(refreshTokens)
        .where(eq(refreshTokens.userId, userId));
      const [{ n: identityCount }] = await tx
        .select({ n: count() })
        .from(oidcIdentities)
        .where(eq(oidcIdentities.userId, userId));
      const [{ n: signInCodeCount }] = await tx
        .select({ n: count() })
        .from(oidcSignInCodes)
        .where(eq(oidcSignInCodes.userId, userId));
      const memberships = await tx
        .select({ groupId: groupMembers.groupId })
        .from(groupMembers)
        .where(eq(groupMembers.userId, userId));
      const [{ n: invitationCount }] = await tx
        .select({ n: count() })
        .from(groupInvitations)
        .where(or(eq(groupInvitations.userId, userId), eq(groupInvitations.invitedBy, userId)));
      const [{ n: blockCount }] = await tx
        .select({ n: count() })
        .from(blocks)
        .where(or(eq(blocks.userId, userId), eq(blocks.blockedUserId, userId)));
      const keyRows = await tx.execute(sql`
        select (select count(*) from identity_keys where user_id = ${userId})
             + (select count(*) from signed_pre_keys where user_id = ${userId})
             + (select count(*) from kyber_last_resort_keys where user_id = ${userId})
             + (select count(*) from one_time_pre_keys where user_id = ${userId})
             + (select count(*) from one_time_kyber_pre_keys where user_id = ${userId}) as n`);
      const keyCount = Number(rowsOf<{ n: unknown }>(keyRows)[0]?.n ?? 0);
      // The id and SHA-256 of each one-time key of the user's handed out lately (src/keys): data
      // about the user's devices, gone by cascade with them.
      const [{ n: handedOutCount }] = await tx
        .select({ n: count() })
        .from(handedOutPreKeys)
        .where(eq(handedOutPreKeys.userId, userId));
      // The groups stay locked until commit: a member leaving meanwhile cannot leave them adminless.
      const groupIds = memberships.map((m) => m.groupId);
      await lockGroups(tx, groupIds);
      // Devices, keys, refresh tokens, memberships (admin roles included), group invitations to and
      // from the user, blocks by and of the user, the identity provider links (iss, sub) and
      // unspent sign-in codes go by cascade.
      const deleted = await tx.delete(accounts).where(eq(accounts.id, userId)).returning({ id: accounts.id });
      // A group the user was the last admin of gets its longest-standing member as admin; one they
      // were the last member of is removed (issue 13 item 11).
      const successions: Succession[] = [];
      for (const groupId of groupIds) successions.push(await keepAnAdmin(tx, groupId));
      const emptyGroups = successions.filter((s) => s.outcome === "deleted").length;
      const promoted = successions.filter((s) => s.outcome === "promoted").length;
      const removed =
        deleted.length +
        deviceCount +
        tokenCount +
        keyCount +
        handedOutCount +
        memberships.length +
        emptyGroups +
        invitationCount +
        blockCount +
        identityCount +
        signInCodeCount;
      const what = `account (${deleted.length}), devices (${deviceCount}), public keys (${keyCount}), records of one-time keys handed out (${handedOutCount}), refresh tokens (${tokenCount}), group memberships and roles (${memberships.length}), emptied groups (${emptyGroups}), groups given a new admin (${promoted}), group invitations to or from the user (${invitationCount}), blocks by or of the user (${blockCount}), identity provider links (${identityCount}), sign-in codes (${signInCodeCount})`;
      // Recorded with the changes it counts, under this node's claim (else all of it rolls back).
      await this.saveStep(erasureId, "postgres", { removed, what }, tx);
      // Not personal data of the erased user: which member now administers which group. In this
      // transaction, last: a node dying after the commit cannot leave a succession unaudited (a
      // retry of this step finds no membership left, so it would never write it).
      let unaudited = successionEvents(successions);
      if (audit.recordIn) {
        await audit.recordIn(tx, unaudited);
        unaudited = [];
      }
      return { unaudited, removed, what };
    });
    // A trail that cannot write inside the transaction: after the commit.
    const events = result.unaudited;
    if (events.length > 0) {
      if (audit.recordAll) await audit.recordAll(events);
      else for (const event of events) await audit.record(event);
    }
    return { removed: result.removed, what: result.what };
  }
}

/** A job this node ran was claimed by another node since (`resumePending` there): it stops here. */
class ClaimLost extends Error {
  override name = "ClaimLost";
  constructor(erasureId: string) {
    super(`erasure ${erasureId} is claimed by another node`);
  }
}

/** Thrown by a test's afterStep hook to stop a job as a crash would (no retry in this process). */
export class SimulatedCrash extends Error {
  override name = "SimulatedCrash";
}
