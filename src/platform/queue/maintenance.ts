import { Queue, type ConnectionOptions } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import { systemEm } from '../db/tenant-em.ts';
import type { IdempotencyService } from '../idempotency/idempotency.service.ts';

export const MAINTENANCE_QUEUE = 'maintenance';
export const IDEMPOTENCY_EXPIRY_JOB = 'idempotency-expiry';

/**
 * Upserts the maintenance Job Schedulers (BullMQ v6; idempotent, so every worker may call it):
 * expired idempotency keys are deleted in batches here, never on a request's hot path.
 */
export async function scheduleMaintenance(deps: { connection: ConnectionOptions; prefix: string; logger: Logger; everyMs?: number }): Promise<Queue> {
  const queue = new Queue(MAINTENANCE_QUEUE, { connection: deps.connection, prefix: deps.prefix });
  // Without a listener BullMQ prints each connection error as a bare multi-line stack trace on stderr.
  queue.on('error', (err) => deps.logger.warn({ err, queue: MAINTENANCE_QUEUE }, 'queue error'));
  await upsertMaintenanceSchedulers(queue, deps.everyMs);
  return queue;
}

/** Idempotent; the sweeper calls it again when Redis lost its data (flushed or replaced). */
export async function upsertMaintenanceSchedulers(queue: Queue, everyMs = 10 * 60_000): Promise<void> {
  await queue.upsertJobScheduler(
    IDEMPOTENCY_EXPIRY_JOB,
    { every: everyMs },
    { name: IDEMPOTENCY_EXPIRY_JOB, data: {}, opts: { removeOnComplete: { count: 20 }, removeOnFail: { count: 50 } } },
  );
}

export function maintenanceHandlers(deps: { orm: MikroORM; idempotency: IdempotencyService; logger: Logger }) {
  return {
    async [IDEMPOTENCY_EXPIRY_JOB]() {
      const deleted = await deps.idempotency.deleteExpired(systemEm(deps.orm));
      if (deleted) deps.logger.info({ deleted }, 'expired idempotency keys deleted');
      return { deleted };
    },
  };
}
