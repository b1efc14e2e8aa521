import { Queue, type ConnectionOptions } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { systemEm } from '../db/tenant-em.ts';
import { deleteEndedRuns } from '../durable/retention.ts';
import type { IdempotencyService } from '../idempotency/idempotency.service.ts';

export const MAINTENANCE_QUEUE = 'maintenance';
export const IDEMPOTENCY_EXPIRY_JOB = 'idempotency-expiry';
export const RUN_RETENTION_JOB = 'run-retention';

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
  const opts = { removeOnComplete: { count: 20 }, removeOnFail: { count: 50 } };
  await queue.upsertJobScheduler(IDEMPOTENCY_EXPIRY_JOB, { every }, { name: IDEMPOTENCY_EXPIRY_JOB, data: {}, opts });
  if (schedule.runRetentionMs) await queue.upsertJobScheduler(RUN_RETENTION_JOB, { every }, { name: RUN_RETENTION_JOB, data: {}, opts });
  else await queue.removeJobScheduler(RUN_RETENTION_JOB);
}

export function maintenanceHandlers(deps: { orm: MikroORM; idempotency: IdempotencyService; logger: Logger; runRetentionMs?: number; runsDeleted?: Counter<'workflow'> }) {
  return {
    async [IDEMPOTENCY_EXPIRY_JOB]() {
      const deleted = await deps.idempotency.deleteExpired(systemEm(deps.orm));
      if (deleted) deps.logger.info({ deleted }, 'expired idempotency keys deleted');
      return { deleted };
    },
    /**
     * Deletes ended runs past RUN_RETENTION with their checkpoints (ADR 0011). A worker whose own
     * RUN_RETENTION is off deletes nothing, even when another worker scheduled the job.
     */
    async [RUN_RETENTION_JOB]() {
      const retentionMs = deps.runRetentionMs ?? 0;
      if (retentionMs <= 0) return { deleted: 0, byWorkflow: {}, batches: 0, complete: true };
      const pass = await deleteEndedRuns(systemEm(deps.orm), { olderThanMs: retentionMs });
      for (const [workflow, n] of Object.entries(pass.byWorkflow)) deps.runsDeleted?.inc({ workflow }, n);
      deps.logger.info({ deleted: pass.deleted, by_workflow: pass.byWorkflow, batches: pass.batches, complete: pass.complete, retention_ms: retentionMs }, 'run retention: ended runs deleted');
      return pass;
    },
  };
}
