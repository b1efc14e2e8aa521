import type { EntityManager } from '@mikro-orm/postgresql';
import { deleteInBatches } from '../db/batch-delete.ts';
import { TERMINAL_RUN_STATUSES } from './durable-run.entity.ts';

/** What one pass of run retention deleted. */
export interface RetentionPass {
  /** Runs deleted (their checkpoints went with them: on delete cascade). */
  deleted: number;
  /** Runs deleted by workflow. */
  byWorkflow: Record<string, number>;
  /** Transactions that deleted a batch (the last one may have found fewer than a batch, or none). */
  batches: number;
  /** False when the pass stopped at `maxBatches` with more to delete: the next pass goes on. */
  complete: boolean;
}

const ENDED = `{${TERMINAL_RUN_STATUSES.join(',')}}`;

/**
 * Deletes the runs of every tenant that ended more than `olderThanMs` ago — their status is terminal
 * and their row has not moved since (`updated_at`: a run's last write is its end) — with their
 * checkpoints, as the system role (`systemEm`, ADR 0003, 0011), in batches of `batchSize` runs, each its
 * own short transaction: a batch's row locks are held for one statement, never for the pass.
 *
 * The database bounds what this can do whatever it is asked: the role may delete only runs whose status
 * has ended a day ago at least (policy durable_runs_system_retention, by an `updated_at` the application
 * role cannot backdate: the trigger updated_at_not_backdated) and reach no other table, and the cascade to
 * checkpoints is the foreign key's. The conditions are repeated outside the sub-select so that a row
 * that changed after the statement's snapshot (a failed run retried: pending again) is checked again
 * once its lock is had, and kept. Nothing `for update skip locked`: that needs UPDATE, which the role
 * must never hold (catalog.ts); two passes at once just wait for each other's batch.
 */
export async function deleteEndedRuns(systemEm: EntityManager, opts: { olderThanMs: number; batchSize?: number; maxBatches?: number }): Promise<RetentionPass> {
  if (!(opts.olderThanMs > 0)) throw new RangeError('deleteEndedRuns: olderThanMs must be positive');
  const { byGroup, ...pass } = await deleteInBatches(systemEm, {
    table: 'durable_runs',
    where: `status = any(?::text[]) and updated_at < now() - ?::float8 * interval '1 millisecond'`,
    params: [ENDED, opts.olderThanMs],
    group: 'workflow',
    batchSize: opts.batchSize ?? 500,
    maxBatches: opts.maxBatches ?? 100,
  });
  return { ...pass, byWorkflow: byGroup };
}
