import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, type ConnectionOptions, type Job } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { systemEm } from '../db/tenant-em.ts';
import { untilAborted } from '../durable/executor.ts';
import { RUN_RETENTION_FLOOR_MS } from '../durable/durable-run.entity.ts';
import { deleteEndedRuns } from '../durable/retention.ts';
import type { IdempotencyService } from '../idempotency/idempotency.service.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../webhooks/delivery.ts';
import { deleteSettledDeliveries } from '../webhooks/retention.ts';
import { warnOnQueueErrors } from './queue-errors.ts';
import { MAINTENANCE_QUEUE } from './maintenance-queue.ts';

// Defined apart (maintenance-queue.ts) for the workflow registry; exported here as before.
export { MAINTENANCE_QUEUE };
export const IDEMPOTENCY_EXPIRY_JOB = 'idempotency-expiry';
export const RUN_RETENTION_JOB = 'run-retention';
/**
 * The deduplication id of the follow-up pass a pass that stopped at its limit queues. A job id would
 * not do: the follow-up, while it runs, could not queue the next under its own id. BullMQ's
 * `keepLastIfActive` keeps at most one waiting beside the one running, whoever asks.
 */
export const RUN_RETENTION_FOLLOW_UP = 'run-retention-follow-up';
/** The deduplication id of the idempotency-expiry pass queued by one that stopped at its limit (as RUN_RETENTION_FOLLOW_UP). */
export const IDEMPOTENCY_EXPIRY_FOLLOW_UP = 'idempotency-expiry-follow-up';

const JOB_OPTS = { removeOnComplete: { count: 20 }, removeOnFail: { count: 50 } };

export interface MaintenanceSchedule {
  /** How often each maintenance job runs (default 10 minutes). */
  everyMs?: number;
  /** RUN_RETENTION: 0 (off) removes the run-retention scheduler, so turning it off stops it. */
  runRetentionMs?: number;
  /** WEBHOOK_REDELIVERY_INTERVAL: how often the webhook redelivery pass runs (default the smaller of `everyMs` and 1 minute). */
  webhookRedeliveryMs?: number;
  /** Where a worker says that its RUN_RETENTION replaces a different scheduled one. */
  logger?: Logger;
  /** The worker that schedules (its instance id), recorded in the scheduler's data. */
  scheduledBy?: string;
  /**
   * The decision recorded in PostgreSQL (recordRetentionDecision) that this schedule copies: its
   * generation is written into the scheduler's data (`decision`), so a copy older than the decision is
   * told from one that is not (ADR 0011). Absent (no database: tests, or the record failed), none is written.
   */
  decision?: RetentionDecision;
}

/**
 * The run-retention decision of the worker started last, as PostgreSQL holds it (run_retention_decision,
 * ADR 0011): its RUN_RETENTION (0: off, no schedule), who decided, and the decision's generation (raised
 * by one at every decision). Redis's `run-retention` Job Scheduler is a copy of it.
 */
export interface RetentionDecision {
  retentionMs: number;
  decidedBy: string;
  generation: number;
}

interface DecisionRow {
  retention_ms: string | number;
  decided_by: string;
  generation: string | number;
}
const decisionOf = (row: DecisionRow | undefined): RetentionDecision | undefined =>
  row && { retentionMs: Number(row.retention_ms), decidedBy: row.decided_by, generation: Number(row.generation) };
/** The table holds no tenant data and has no row-level security: the application role, no tenant bound. */
const platformEm = (orm: MikroORM) => orm.em.fork({ clear: true, useContext: false });

/** How long recording a decision waits for the row's lock before the attempt fails (and is retried). */
const DECISION_LOCK_TIMEOUT_MS = 2_000;

/**
 * Records a worker's run-retention decision at its start (the worker started last decides): one row,
 * replaced, its generation raised by one under the row's lock, so two workers starting at once get two
 * generations and the later commit's is the higher.
 */
export async function recordRetentionDecision(orm: MikroORM, decision: { retentionMs: number; decidedBy: string }): Promise<RetentionDecision> {
  const em = platformEm(orm);
  // A row held by another transaction (an operator's session, a stuck transaction) fails the attempt
  // after DECISION_LOCK_TIMEOUT_MS, not DATABASE_STATEMENT_TIMEOUT (30 s): a worker stopped meanwhile
  // stops after that attempt, within its hard deadline (WORKER_SHUTDOWN_GRACE + 10 s), not cut off at it.
  em.setSessionContext({ variables: { lock_timeout: `${DECISION_LOCK_TIMEOUT_MS}ms` } });
  const [row] = await em.transactional((tx) =>
    tx.execute<DecisionRow[]>(
      `insert into run_retention_decision as d (id, retention_ms, decided_by, generation, decided_at) values (1, ?, ?, 1, now())
       on conflict (id) do update set retention_ms = excluded.retention_ms, decided_by = excluded.decided_by, generation = d.generation + 1, decided_at = now()
       returning retention_ms, decided_by, generation`,
      [Math.max(0, decision.retentionMs), decision.decidedBy],
    ),
  );
  return decisionOf(row)!;
}

/** The run-retention decision recorded last; undefined when no worker of this release has recorded one. */
export async function readRetentionDecision(orm: MikroORM): Promise<RetentionDecision | undefined> {
  const [row] = await platformEm(orm).transactional((tx) => tx.execute<DecisionRow[]>(`select retention_ms, decided_by, generation from run_retention_decision where id = 1`));
  return decisionOf(row);
}

/**
 * The data of a run-retention job: the retention the scheduler was set up with (ADR 0011). Every pass
 * deletes with it, whichever worker runs the pass, so the retention in force is the one visible in
 * Redis, not the RUN_RETENTION of the worker that happened to take the job.
 */
export interface RetentionJobData {
  retention_ms: number;
  scheduled_by?: string;
  /** The generation of the recorded decision (run_retention_decision) this schedule copies; absent: a scheduler of an older release, or of a worker that recorded none. */
  decision?: number;
}

/** The retention a job carries, if it carries a usable one (a scheduler of an older release carries none). */
function scheduledRetention(data: unknown): number | undefined {
  const ms = (data as Partial<RetentionJobData> | undefined)?.retention_ms;
  return typeof ms === 'number' && Number.isFinite(ms) && ms > 0 ? ms : undefined;
}

/**
 * The run-retention schedule as Redis holds it now: not `scheduled` once a worker with RUN_RETENTION off
 * removed it; `retentionMs` undefined for a scheduler of an older release, which carries none.
 */
async function retentionInForce(queue: Queue): Promise<{ scheduled: false } | { scheduled: true; retentionMs: number | undefined }> {
  const scheduler = await queue.getJobScheduler(RUN_RETENTION_JOB);
  return scheduler ? { scheduled: true, retentionMs: scheduledRetention(scheduler.template?.data) } : { scheduled: false };
}

/** A retention as an operator writes it: 30d, 12h, 90m, 45s; 0 is "off". */
export function formatRetention(ms: number): string {
  if (ms <= 0) return 'off';
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * Upserts the maintenance Job Schedulers (BullMQ v6; idempotent, so every worker may call it):
 * expired idempotency keys are deleted in batches here, never on a request's hot path, and so are
 * ended runs past RUN_RETENTION (ADR 0011).
 */
export async function scheduleMaintenance(
  deps: {
    connection: ConnectionOptions;
    prefix: string;
    logger: Logger;
    orm?: MikroORM;
    /** The worker stopping: a start still recording the decision stops after that attempt, one waiting for Redis at once. */
    signal?: AbortSignal;
    retryMs?: number;
    /** Told where the start is now (a worker stopped before it had started says where it was). */
    onStage?: (stage: 'redis' | 'postgresql') => void;
  } & MaintenanceSchedule,
): Promise<Queue> {
  const queue = new Queue(MAINTENANCE_QUEUE, { connection: deps.connection, prefix: deps.prefix });
  // Without a listener BullMQ prints each connection error as a bare multi-line stack trace on stderr.
  warnOnQueueErrors(queue, MAINTENANCE_QUEUE, deps.logger);
  try {
    // Redis first: a worker that cannot reach it has not started and decides nothing. Recorded while it
    // waited (Redis down, or a REDIS_URL that is not the deployment's), its RUN_RETENTION — off by
    // default — would be put in force by every other worker's next sweep (ADR 0011).
    deps.onStage?.('redis');
    await untilAborted(queue.waitUntilReady(), deps.signal);
    // The schedule this worker replaces, read before its decision is committed: from that commit on,
    // any worker's sweep may make the scheduler the new decision's copy (repairRunRetentionSchedule)
    // before the upsert below reads it, and the `RUN_RETENTION differs` warning was lost (ADR 0011).
    const replaced = await untilAborted(queue.getJobScheduler(RUN_RETENTION_JOB), deps.signal);
    // The decision, then its copy in Redis: a sweep that reads the decision after this commit and finds
    // the copy missing or older puts back this one (repairRunRetentionSchedule, ADR 0011).
    let decision: RetentionDecision | undefined;
    if (deps.orm) {
      deps.signal?.throwIfAborted();
      deps.onStage?.('postgresql');
      // Not raced against `signal`: it stops by itself after the statement in flight (a statement left in
      // flight while the container closes its ORM broke the transaction and held the pool's close).
      decision = await recordUntilDone(deps.orm, deps);
      // Stopped while the decision was being recorded: nothing more is sent on a connection about to close.
      deps.signal?.throwIfAborted();
      deps.onStage?.('redis');
    }
    // Stopped meanwhile: the upsert is given up (BullMQ waits for a connection that is not ready yet,
    // however long Redis is down), and the queue closed before the caller closes the connection. Left
    // open, its connection's failure once closed came out as `queue error` warnings after the process's
    // last line.
    await untilAborted(upsertMaintenanceSchedulers(queue, { ...deps, ...(decision ? { decision } : {}), replaced: replaced ?? null }), deps.signal);
  } catch (err) {
    await queue.close().catch(() => {});
    throw err;
  }
  return queue;
}

/**
 * The start waits for PostgreSQL to take the decision, as it waits for Redis to take the schedule: a
 * worker that changed the schedule without recording it would have it undone by the next sweep's repair,
 * back to the decision before it. Until `signal` aborts (the worker stopping). Says so on the first
 * failed attempt and every 60th after (about once a minute at the default retry), not at every retry:
 * a start stuck for hours stays visible without a multi-kilobyte line a second.
 */
async function recordUntilDone(orm: MikroORM, deps: { logger: Logger; signal?: AbortSignal; retryMs?: number } & MaintenanceSchedule): Promise<RetentionDecision> {
  for (let attempts = 1; ; attempts++) {
    try {
      const decision = await recordRetentionDecision(orm, { retentionMs: deps.runRetentionMs ?? 0, decidedBy: deps.scheduledBy ?? 'unknown' });
      deps.logger.info({ run_retention_ms: decision.retentionMs, decision: decision.generation, attempts }, "this worker's run-retention decision recorded");
      return decision;
    } catch (err) {
      deps.signal?.throwIfAborted();
      const code = String((err as { code?: unknown })?.code);
      const missing = ['42P01', '42501'].includes(code);
      if ((attempts - 1) % 60 === 0) {
        // A table or grant missing: this release's `db:migrate` did not run, and no retry will help until it does.
        if (missing) deps.logger.error({ err, attempts }, "could not record this worker's run-retention decision: run `npm run db:migrate` to apply this release's migrations; retrying");
        else if (code === '55P03') deps.logger.warn({ err, attempts }, "could not record this worker's run-retention decision: another transaction holds run_retention_decision; retrying");
        else deps.logger.warn({ err, attempts }, "could not record this worker's run-retention decision (PostgreSQL unreachable?); retrying until it is");
      }
      await sleep(deps.retryMs ?? 1000, undefined, deps.signal ? { signal: deps.signal } : {});
    }
  }
}

/**
 * Idempotent; the sweeper calls it again when Redis lost its data (flushed or replaced), through
 * restoreMaintenanceSchedulers. The
 * run-retention scheduler carries the retention it is scheduled with; of workers started with
 * different RUN_RETENTION values, the one started last decides (ADR 0011), and says so: a warning
 * naming its value and the one it replaces.
 */
export async function upsertMaintenanceSchedulers(
  queue: Queue,
  schedule: MaintenanceSchedule & {
    orm?: MikroORM;
    signal?: AbortSignal;
    /** The run-retention scheduler as read before this worker's decision was committed (null: none), which the warning names; absent: as read now. */
    replaced?: { template?: { data?: unknown } } | null;
  } = {},
): Promise<void> {
  const every = await upsertStandingSchedulers(queue, schedule);
  const own = schedule.runRetentionMs ?? 0;
  const existing = await queue.getJobScheduler(RUN_RETENTION_JOB);
  const replaced = schedule.replaced === undefined ? existing : schedule.replaced;
  const scheduled = replaced ? scheduledRetention(replaced.template?.data) : undefined;
  if (scheduled !== undefined && scheduled !== own) {
    schedule.logger?.warn(
      { run_retention_ms: own, scheduled_run_retention_ms: scheduled, scheduled_by: (replaced?.template?.data as Partial<RetentionJobData> | undefined)?.scheduled_by },
      `RUN_RETENTION differs from the scheduled run retention: this worker's ${formatRetention(own)} replaces the scheduled ${formatRetention(scheduled)} (the worker started last decides, ADR 0011)`,
    );
  }
  if (own > 0) await upsertRetentionScheduler(queue, every, { retention_ms: own, ...(schedule.scheduledBy ? { scheduled_by: schedule.scheduledBy } : {}), ...(schedule.decision ? { decision: schedule.decision.generation } : {}) });
  else if (existing) await queue.removeJobScheduler(RUN_RETENTION_JOB);
  // A worker that started beside this one may have committed a later decision and written Redis before
  // this write: read the decision again, as the sweep's repair does, so the copy is the later commit's
  // when this start ends, not only at the next sweep (a new scheduler's first pass runs at once).
  // Not once the worker is stopping: its start has given this upsert up and the container is closing
  // the database pool, which a read started now would hold open (a read already in flight when the
  // stop lands still can: a window of one short statement).
  if (schedule.orm && schedule.decision && !schedule.signal?.aborted) await repairRunRetentionSchedule(queue, schedule.orm, schedule);
}

const upsertRetentionScheduler = (queue: Queue, every: number, data: RetentionJobData) =>
  queue.upsertJobScheduler(RUN_RETENTION_JOB, { every }, { name: RUN_RETENTION_JOB, data, opts: JOB_OPTS });

/** What repairRunRetentionSchedule did to the run-retention scheduler. */
export type ScheduleRepair = 'kept' | 'restored' | 'removed';

/**
 * Makes the run-retention scheduler a copy of `decision` when it is not one of it or of a later one:
 * gone while the decision schedules (Redis lost it, alone or with the rest), or carrying an older
 * decision's generation (a snapshot restored, or a repair that read the decision just before a worker
 * started) — upserted with the decision's retention and decider; there while the decision is off, with
 * an older generation — removed. A scheduler carrying no generation is an older release's (its worker
 * may have started after the decision: the last started decides) and is kept.
 */
async function copyDecision(queue: Queue, decision: RetentionDecision, every: number): Promise<ScheduleRepair> {
  const existing = await queue.getJobScheduler(RUN_RETENTION_JOB);
  if (existing) {
    const copied = (existing.template?.data as Partial<RetentionJobData> | undefined)?.decision;
    if (typeof copied !== 'number' || copied >= decision.generation) return 'kept';
    if (decision.retentionMs <= 0) {
      await queue.removeJobScheduler(RUN_RETENTION_JOB);
      return 'removed';
    }
  } else if (decision.retentionMs <= 0) return 'kept';
  await upsertRetentionScheduler(queue, every, { retention_ms: decision.retentionMs, scheduled_by: decision.decidedBy, decision: decision.generation });
  return 'restored';
}

/**
 * The sweeper's repair of the run-retention schedule (every sweep, and after a loss of Redis's data): the
 * scheduler made a copy of the decision PostgreSQL holds (copyDecision), whatever Redis kept or lost, so
 * a scheduler lost alone comes back with the settings of the worker started last, and one it removed
 * (off) stays removed. The decision is read again after a change: a worker that recorded a later one
 * meanwhile changes Redis after its commit, and if the second read did not see that commit, the worker's
 * change comes after this one; if it did, the repair goes again with it. Resolves undefined when no
 * decision is recorded (no worker of this release has started).
 */
export async function repairRunRetentionSchedule(queue: Queue, orm: MikroORM, schedule: MaintenanceSchedule = {}): Promise<ScheduleRepair | undefined> {
  const every = schedule.everyMs ?? 10 * 60_000;
  let decision = await readRetentionDecision(orm);
  let done: ScheduleRepair = 'kept';
  for (let round = 0; decision && round < 3; round++) {
    const repair = await copyDecision(queue, decision, every);
    if (repair === 'kept') return done;
    done = repair;
    schedule.logger?.warn(
      { repair, run_retention_ms: decision.retentionMs, decided_by: decision.decidedBy, decision: decision.generation },
      repair === 'removed'
        ? 'run-retention schedule removed: it copied an older decision, and the worker started last has RUN_RETENTION off (ADR 0011)'
        : `run-retention schedule put back as the worker started last decided it (${formatRetention(decision.retentionMs)}): Redis had lost it, or held an older decision's (ADR 0011)`,
    );
    const again = await readRetentionDecision(orm);
    if (again?.generation === decision.generation) return done;
    decision = again;
  }
  return decision ? done : undefined;
}

/**
 * The schedulers no worker removes (idempotency expiry; webhook redelivery, ADR 0013) and the interval
 * of each under these settings.
 */
function standingSchedulers(schedule: MaintenanceSchedule): { name: string; every: number }[] {
  const every = schedule.everyMs ?? 10 * 60_000;
  return [
    { name: IDEMPOTENCY_EXPIRY_JOB, every },
    // Pending webhook deliveries whose job Redis lost get it back within WEBHOOK_REDELIVERY_INTERVAL (ADR 0013).
    { name: WEBHOOK_REDELIVERY_JOB, every: schedule.webhookRedeliveryMs ?? Math.min(every, 60_000) },
  ];
}

const upsertStanding = (queue: Queue, s: { name: string; every: number }) =>
  queue.upsertJobScheduler(s.name, { every: s.every }, { name: s.name, data: {}, opts: JOB_OPTS });

/**
 * The schedulers no worker removes: upserted at every start and by every repair, whatever else Redis
 * kept. Resolves the schedule's interval.
 */
async function upsertStandingSchedulers(queue: Queue, schedule: MaintenanceSchedule): Promise<number> {
  for (const standing of standingSchedulers(schedule)) await upsertStanding(queue, standing);
  return schedule.everyMs ?? 10 * 60_000;
}

/**
 * The sweeper's repair at every sweep of the schedulers no worker removes: upserted when one is gone,
 * or runs on a schedule other than these settings' (an interval or a cron pattern changed in Redis by
 * hand — redis-cli, a script, or Bull Board's scheduler edit before the dashboard refused it: a webhook
 * redelivery pass every 30 days would leave pending deliveries whose job Redis lost undelivered for a
 * month). The repair after a loss (restoreMaintenanceSchedulers) runs once per loss, by the worker whose
 * sweep found the marker gone, which sets the marker first: a worker killed before it got to the
 * schedulers (its repair of waiting runs can take minutes) left the marker set and the schedulers gone,
 * and no other worker's sweep would put them back — pending webhook deliveries whose jobs the loss took
 * were never redelivered, expired idempotency keys never deleted, until a worker started. Resolves the
 * names of the schedulers put back (gone, or on another schedule).
 */
export async function repairStandingSchedulers(queue: Queue, schedule: MaintenanceSchedule = {}): Promise<string[]> {
  const standing = standingSchedulers(schedule);
  const found = await Promise.all(standing.map((s) => queue.getJobScheduler(s.name)));
  const off = standing.filter((s, i) => {
    const existing = found[i];
    return !existing || existing.every !== s.every || existing.pattern !== undefined;
  });
  for (const s of off) await upsertStanding(queue, s);
  return off.map((s) => s.name);
}

/**
 * The sweeper's repair of the schedulers once its marker is gone (Redis flushed or replaced, or its
 * first sweep on a fresh Redis). The schedulers no worker removes are upserted always: Redis may have
 * kept some keys and lost others (a snapshot older than a scheduler, keys lost one by one), or a
 * worker of an older release, started since the loss, may have upserted only the ones it knows. The
 * run-retention schedule is put back as the worker started last decided it, from the decision
 * PostgreSQL holds (`orm`: repairRunRetentionSchedule), never with this worker's own RUN_RETENTION —
 * perhaps a worker started after this one decided otherwise. Without a recorded decision (no `orm`, or
 * none recorded yet) the fallback of the release before: this worker's RUN_RETENTION, only when the
 * idempotency-expiry scheduler (every worker upserts it at start, none removes it) was gone too. Resolves
 * what became of the run-retention schedule.
 */
export async function restoreMaintenanceSchedulers(queue: Queue, schedule: MaintenanceSchedule & { orm?: MikroORM } = {}): Promise<ScheduleRepair> {
  const lost = !(await queue.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB));
  await upsertStandingSchedulers(queue, schedule);
  const repaired = schedule.orm ? await repairRunRetentionSchedule(queue, schedule.orm, schedule) : undefined;
  if (repaired) return repaired;
  if (!lost) return 'kept';
  await upsertMaintenanceSchedulers(queue, schedule);
  return 'restored';
}

/**
 * Queues the next run-retention pass at once: a pass that stopped at its limit (`complete: false`)
 * leaves a backlog, which is drained pass after pass rather than one pass per 10 minutes. At most one
 * follow-up waits (deduplicated), so passes never pile up however many stop at their limit.
 */
export async function queueRetentionFollowUp(queue: Queue, retentionMs: number): Promise<void> {
  const data: RetentionJobData = { retention_ms: retentionMs };
  await queue.add(RUN_RETENTION_JOB, data, { ...JOB_OPTS, deduplication: { id: RUN_RETENTION_FOLLOW_UP, keepLastIfActive: true } });
}

export function maintenanceHandlers(deps: {
  orm: MikroORM;
  idempotency: IdempotencyService;
  logger: Logger;
  runRetentionMs?: number;
  runsDeleted?: Counter<'workflow'>;
  webhookDeliveriesDeleted?: Counter<'status'>;
  /** The maintenance queue, where a pass that stopped at its limit queues the next (none: it does not). */
  maintenanceQueue?: () => Queue | undefined;
  /** The pass limits (deleteEndedRuns' defaults unless set; tests shrink them). */
  retentionBatch?: { batchSize?: number; maxBatches?: number };
  /** The idempotency-expiry pass limits (deleteExpired's defaults unless set; tests shrink them). */
  idempotencyBatch?: { batchSize?: number; maxBatches?: number };
}) {
  return {
    /**
     * Deletes expired idempotency keys. A pass is bounded (100 batches of 1,000), and one every 10
     * minutes is 100,000 keys: fewer than a sustained 170 keyed POSTs a second make, so a pass that
     * stopped at its limit queues the next at once (at most one waits, as for run retention), or the
     * table would grow without end at such a rate, and a backlog (workers down for a day) drain at
     * 100,000 keys per 10 minutes.
     */
    async [IDEMPOTENCY_EXPIRY_JOB]() {
      const pass = await deps.idempotency.deleteExpired(systemEm(deps.orm), deps.idempotencyBatch?.batchSize, deps.idempotencyBatch?.maxBatches);
      const queue = deps.maintenanceQueue?.();
      if (queue && !pass.complete) {
        await queue.add(IDEMPOTENCY_EXPIRY_JOB, {}, { ...JOB_OPTS, deduplication: { id: IDEMPOTENCY_EXPIRY_FOLLOW_UP, keepLastIfActive: true } });
      }
      if (pass.deleted) deps.logger.info({ deleted: pass.deleted, complete: pass.complete }, 'expired idempotency keys deleted');
      return pass;
    },
    /**
     * Deletes ended runs past the retention of the schedule in force — the scheduler's data as Redis
     * holds it when the pass starts (ADR 0011), whichever worker runs it and whatever schedule a
     * follow-up was queued under — or, with a scheduler that carries none (an older release's), past
     * the job's, else this worker's own RUN_RETENTION. No scheduler (a worker started with retention
     * off removed it): nothing is deleted. A worker whose own RUN_RETENTION is off deletes nothing,
     * whatever the schedule says. A pass that stopped at its limit queues the next at once
     * (queueRetentionFollowUp), with the retention it applied. Without a maintenance queue (tests), the
     * job's retention applies.
     */
    async [RUN_RETENTION_JOB](job?: Pick<Job, 'data'>) {
      const own = deps.runRetentionMs ?? 0;
      const skipped = { deleted: 0, byWorkflow: {}, batches: 0, webhookDeliveries: { deleted: 0, byStatus: {}, batches: 0, complete: true }, complete: true };
      if (own <= 0) return skipped;
      const queue = deps.maintenanceQueue?.();
      // The schedule in force, read at each pass: a follow-up carries the value of the schedule it was
      // queued under, which a worker started since may have replaced or removed (ADR 0011).
      const inForce = queue ? await retentionInForce(queue) : { scheduled: true as const, retentionMs: undefined };
      if (!inForce.scheduled) {
        deps.logger.info({ queued_retention_ms: scheduledRetention(job?.data) ?? null }, 'run retention: not scheduled (removed by a worker started with RUN_RETENTION off): pass skipped');
        return skipped;
      }
      const asked = inForce.retentionMs ?? scheduledRetention(job?.data) ?? own;
      // Never under the floor (ADR 0011, amendment "A floor under retention"): config refuses a shorter
      // RUN_RETENTION and the recorded decision cannot hold one, but a scheduler or a job is Redis's data.
      // The database refuses to delete a run or a delivery that recent anyway (both policies carry the floor); this says so.
      const retentionMs = Math.max(asked, RUN_RETENTION_FLOOR_MS);
      if (asked < RUN_RETENTION_FLOOR_MS) {
        deps.logger.warn({ scheduled_retention_ms: asked, retention_ms: retentionMs }, `run retention: the schedule asks for ${formatRetention(asked)}, under the floor: ${formatRetention(retentionMs)} applied (ADR 0011)`);
      }
      const runs = await deleteEndedRuns(systemEm(deps.orm), { ...deps.retentionBatch, olderThanMs: retentionMs });
      for (const [workflow, n] of Object.entries(runs.byWorkflow)) deps.runsDeleted?.inc({ workflow }, n);
      // Settled webhook deliveries past the same retention (ADR 0013): pending ones are never deleted.
      const webhookDeliveries = await deleteSettledDeliveries(systemEm(deps.orm), { ...deps.retentionBatch, olderThanMs: retentionMs });
      for (const [status, n] of Object.entries(webhookDeliveries.byStatus)) deps.webhookDeliveriesDeleted?.inc({ status }, n);
      const pass = { ...runs, webhookDeliveries, complete: runs.complete && webhookDeliveries.complete };
      if (queue && !pass.complete) await queueRetentionFollowUp(queue, retentionMs);
      deps.logger.info(
        {
          deleted: runs.deleted,
          by_workflow: runs.byWorkflow,
          batches: runs.batches,
          webhook_deliveries_deleted: webhookDeliveries.deleted,
          webhook_deliveries_by_status: webhookDeliveries.byStatus,
          webhook_delivery_batches: webhookDeliveries.batches,
          complete: pass.complete,
          retention_ms: retentionMs,
        },
        'run retention: ended runs deleted',
      );
      return pass;
    },
  };
}
