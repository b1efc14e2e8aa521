import { defineEntity, p } from '@mikro-orm/core';
import { RUN_RETENTION_FLOOR_MS } from '../durable/durable-run.entity.ts';

/**
 * The run-retention decision of the worker started last (ADR 0011): its RUN_RETENTION (0: off, no
 * schedule) and who decided, with a generation every decision raises by one. One row (`id` 1), written by
 * each worker at start before it upserts or removes the `run-retention` Job Scheduler, which is Redis's
 * copy of it: what survives a loss of Redis's data (a flush, a snapshot restored, keys lost one by one),
 * so the sweeper puts the schedule back as the worker started last left it, not as its own worker would.
 * No tenant_id and no tenant data: a platform setting (APP_UNTENANTED_GRANTS lets the application role
 * read and write it, nothing else).
 */
export const RunRetentionDecisionRow = defineEntity({
  name: 'RunRetentionDecision',
  tableName: 'run_retention_decision',
  properties: {
    id: p.smallint().primary().autoincrement(false),
    /** The deciding worker's RUN_RETENTION in milliseconds; 0: retention off, no run-retention scheduler. */
    retentionMs: p.bigint('number'),
    /** The deciding worker's instance id (the scheduler's `scheduled_by`). */
    decidedBy: p.string().length(255),
    /** Raised by one at every decision: a scheduler carrying an older one is a stale copy. */
    generation: p.bigint('number'),
    decidedAt: p.datetime(),
  },
  checks: [
    { name: 'run_retention_decision_single_row', expression: 'id = 1' },
    // 0 (off) or at least the floor (ADR 0011, amendment "A floor under retention"): the application
    // role writes this row, and every worker's pass applies what it says.
    { name: 'run_retention_decision_retention_ms_check', expression: `retention_ms = 0 or retention_ms >= ${RUN_RETENTION_FLOOR_MS}` },
  ],
});
