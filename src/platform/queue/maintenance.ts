import { Queue, type ConnectionOptions, type Job } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { systemEm } from '../db/tenant-em.ts';
import { deleteEndedRuns } from '../durable/retention.ts';
import type { IdempotencyService } from '../idempotency/idempotency.service.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../webhooks/delivery.ts';
import { deleteSettledDeliveries } from '../webhooks/retention.ts';

export const MAINTENANCE_QUEUE = 'maintenance';
export const IDEMPOTENCY_EXPIRY_JOB = 'idempotency-expiry';
export const RUN_RETENTION_JOB = 'run-retention';
/**
 * The deduplication id of the follow-up pass a pass that stopped at its limit queues. A job id would
 * not do: the follow-up, while it runs, could not queue the next under its own id. BullMQ's
 * `keepLastIfActive` keeps at most one waiting beside the one running, whoever asks.
 */
export const RUN_RETENTION_FOLLOW_UP = 'run-retention-follow-up';

const JOB_OPTS = { removeOnComplete: { count: 20 }, removeOnFail: { count: 50 } };

export interface MaintenanceSchedule {
  /** How often each maintenance job runs (default 10 minutes). */
  everyMs?: number;
  /** RUN_RETENTION: 0 (off) removes the run-retention scheduler, so turning it off stops it. */
  runRetentionMs?: number;
  /** Where a worker says that its RUN_RETENTION replaces a different scheduled one. */
  logger?: Logger;
  /** The worker that schedules (its instance id), recorded in the scheduler's data. */
  scheduledBy?: string;
}

/**
 * The data of a run-retention job: the retention the scheduler was set up with (ADR 0011). Every pass
 * deletes with it, whichever worker runs the pass, so the retention in force is the one visible in
 * Redis, not the RUN_RETENTION of the worker that happened to take the job.
 */
export interface RetentionJobData {
  retention_ms: number;
  scheduled_by?: string;
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
export async function scheduleMaintenance(deps: { connection: ConnectionOptions; prefix: string; logger: Logger } & MaintenanceSchedule): Promise<Queue> {
  const queue = new Queue(MAINTENANCE_QUEUE, { connection: deps.connection, prefix: deps.prefix });
  // Without a listener BullMQ prints each connection error as a bare multi-line stack trace on stderr.
  queue.on('error', (err) => deps.logger.warn({ err, queue: MAINTENANCE_QUEUE }, 'queue error'));
  await upsertMaintenanceSchedulers(queue, deps);
  return queue;
}

/**
 * Idempotent; the sweeper calls it again when Redis lost its data (flushed or replaced), through
 * restoreMaintenanceSchedulers. The
 * run-retention scheduler carries the retention it is scheduled with; of workers started with
 * different RUN_RETENTION values, the one started last decides (ADR 0011), and says so: a warning
 * naming its value and the one it replaces.
 */
export async function upsertMaintenanceSchedulers(queue: Queue, schedule: MaintenanceSchedule = {}): Promise<void> {
  const every = await upsertStandingSchedulers(queue, schedule);
  const own = schedule.runRetentionMs ?? 0;
  const existing = await queue.getJobScheduler(RUN_RETENTION_JOB);
  const scheduled = existing ? scheduledRetention(existing.template?.data) : undefined;
  if (scheduled !== undefined && scheduled !== own) {
    schedule.logger?.warn(
      { run_retention_ms: own, scheduled_run_retention_ms: scheduled, scheduled_by: (existing?.template?.data as Partial<RetentionJobData> | undefined)?.scheduled_by },
      `RUN_RETENTION differs from the scheduled run retention: this worker's ${formatRetention(own)} replaces the scheduled ${formatRetention(scheduled)} (the worker started last decides, ADR 0011)`,
    );
  }
  if (own > 0) {
    const data: RetentionJobData = { retention_ms: own, ...(schedule.scheduledBy ? { scheduled_by: schedule.scheduledBy } : {}) };
    await queue.upsertJobScheduler(RUN_RETENTION_JOB, { every }, { name: RUN_RETENTION_JOB, data, opts: JOB_OPTS });
  } else if (existing) await queue.removeJobScheduler(RUN_RETENTION_JOB);
}

/**
 * The schedulers no worker removes (idempotency expiry; webhook redelivery, ADR 0013): upserted at
 * every start and by every repair, whatever else Redis kept. Resolves the schedule's interval.
 */
async function upsertStandingSchedulers(queue: Queue, schedule: MaintenanceSchedule): Promise<number> {
  const every = schedule.everyMs ?? 10 * 60_000;
  await queue.upsertJobScheduler(IDEMPOTENCY_EXPIRY_JOB, { every }, { name: IDEMPOTENCY_EXPIRY_JOB, data: {}, opts: JOB_OPTS });
  // Pending webhook deliveries whose job Redis lost get it back within a minute (ADR 0013).
  await queue.upsertJobScheduler(WEBHOOK_REDELIVERY_JOB, { every: Math.min(every, 60_000) }, { name: WEBHOOK_REDELIVERY_JOB, data: {}, opts: JOB_OPTS });
  return every;
}

/**
 * The sweeper's repair of the schedulers once its marker is gone (Redis flushed or replaced, or its
 * first sweep on a fresh Redis). The schedulers no worker removes are upserted always: Redis may have
 * kept some keys and lost others (a snapshot older than a scheduler, keys lost one by one), or a
 * worker of an older release, started since the loss, may have upserted only the ones it knows. The
 * run-retention schedule is upserted with this worker's RUN_RETENTION only when the idempotency-expiry
 * scheduler (every worker upserts it at start, none removes it) was gone too: while it is there the
 * run-retention schedule, or its absence, is the one the worker started last decided (ADR 0011) —
 * perhaps a worker started after this one — and is left as it is. Resolves true when it upserted the
 * run-retention schedule too.
 */
export async function restoreMaintenanceSchedulers(queue: Queue, schedule: MaintenanceSchedule = {}): Promise<boolean> {
  const lost = !(await queue.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB));
  if (lost) await upsertMaintenanceSchedulers(queue, schedule);
  else await upsertStandingSchedulers(queue, schedule);
  return lost;
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
}) {
  return {
    async [IDEMPOTENCY_EXPIRY_JOB]() {
      const deleted = await deps.idempotency.deleteExpired(systemEm(deps.orm));
      if (deleted) deps.logger.info({ deleted }, 'expired idempotency keys deleted');
      return { deleted };
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
      const retentionMs = inForce.retentionMs ?? scheduledRetention(job?.data) ?? own;
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
