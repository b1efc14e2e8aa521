import { Queue, type ConnectionOptions } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { systemEm } from '../db/tenant-em.ts';
import { deleteEndedRuns } from '../durable/retention.ts';
import type { IdempotencyService } from '../idempotency/idempotency.service.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../webhooks/delivery.ts';

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

/** Idempotent; the sweeper calls it again when Redis lost its data (flushed or replaced). */
export async function upsertMaintenanceSchedulers(queue: Queue, schedule: MaintenanceSchedule = {}): Promise<void> {
  const every = schedule.everyMs ?? 10 * 60_000;
  await queue.upsertJobScheduler(IDEMPOTENCY_EXPIRY_JOB, { every }, { name: IDEMPOTENCY_EXPIRY_JOB, data: {}, opts: JOB_OPTS });
  // Pending webhook deliveries whose job Redis lost get it back within a minute (ADR 0013).
  await queue.upsertJobScheduler(WEBHOOK_REDELIVERY_JOB, { every: Math.min(every, 60_000) }, { name: WEBHOOK_REDELIVERY_JOB, data: {}, opts: JOB_OPTS });
  if (schedule.runRetentionMs) await queue.upsertJobScheduler(RUN_RETENTION_JOB, { every }, { name: RUN_RETENTION_JOB, data: {}, opts: JOB_OPTS });
  else await queue.removeJobScheduler(RUN_RETENTION_JOB);
}

/**
 * Queues the next run-retention pass at once: a pass that stopped at its limit (`complete: false`)
 * leaves a backlog, which is drained pass after pass rather than one pass per 10 minutes. At most one
 * follow-up waits (deduplicated), so passes never pile up however many stop at their limit.
 */
export async function queueRetentionFollowUp(queue: Queue): Promise<void> {
  await queue.add(RUN_RETENTION_JOB, {}, { ...JOB_OPTS, deduplication: { id: RUN_RETENTION_FOLLOW_UP, keepLastIfActive: true } });
}

export function maintenanceHandlers(deps: {
  orm: MikroORM;
  idempotency: IdempotencyService;
  logger: Logger;
  runRetentionMs?: number;
  runsDeleted?: Counter<'workflow'>;
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
     * Deletes ended runs past RUN_RETENTION with their checkpoints (ADR 0011). A worker whose own
     * RUN_RETENTION is off deletes nothing, even when another worker scheduled the job. A pass that
     * stopped at its limit queues the next at once (queueRetentionFollowUp).
     */
    async [RUN_RETENTION_JOB]() {
      const retentionMs = deps.runRetentionMs ?? 0;
      if (retentionMs <= 0) return { deleted: 0, byWorkflow: {}, batches: 0, complete: true };
      const pass = await deleteEndedRuns(systemEm(deps.orm), { ...deps.retentionBatch, olderThanMs: retentionMs });
      for (const [workflow, n] of Object.entries(pass.byWorkflow)) deps.runsDeleted?.inc({ workflow }, n);
      const queue = pass.complete ? undefined : deps.maintenanceQueue?.();
      if (queue) await queueRetentionFollowUp(queue);
      deps.logger.info({ deleted: pass.deleted, by_workflow: pass.byWorkflow, batches: pass.batches, complete: pass.complete, retention_ms: retentionMs }, 'run retention: ended runs deleted');
      return pass;
    },
  };
}
