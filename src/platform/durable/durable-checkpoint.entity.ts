import { defineEntity, p, type InferEntity } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';
import { DurableRun } from './durable-run.entity.ts';

export const CHECKPOINT_STATUSES = ['started', 'completed', 'failed', 'waiting'] as const;
export type CheckpointStatus = (typeof CHECKPOINT_STATUSES)[number];

/**
 * A checkpoint that is not (yet) completed, as PostgreSQL prints the predicate back from pg_policies (so
 * the schema diff is empty): the only rows the restrictive delete policy below lets anyone bound by it delete.
 */
export const NOT_COMPLETED_CHECKPOINT_SQL = `(status <> 'completed'::text)`;
/** The trigger that refuses any update of a completed checkpoint (ADR 0001, amendment "Checkpoints are history"). */
export const COMPLETED_CHECKPOINT_TRIGGER = 'completed_is_history';

/**
 * The durable record of one step of one run. Written in the same transaction as the step's
 * effects; its primary key (tenant, run, sequence_num) makes a concurrent second execution roll back.
 * `id` is kept (written, never looked up) but not indexed: every statement finds a checkpoint by its
 * key, and an index on a random uuid alone cost every checkpoint insert a second B-tree insert
 * (docs/performance.md, session 24).
 */
export const DurableCheckpoint = defineEntity({
  name: 'DurableCheckpoint',
  tableName: 'durable_checkpoints',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    // (tenant_id, run_id) → durable_runs (tenant_id, id): referential checks bypass RLS, so the key carries
    // the tenant and a checkpoint can never point at (or probe) another tenant's run.
    run: () => p.manyToOne(DurableRun).joinColumns('tenant_id', 'run_id').referencedColumnNames('tenant_id', 'id').deleteRule('cascade').primary(),
    sequenceNum: p.integer().primary(),
    stepName: p.string().length(100),
    status: p.enum(CHECKPOINT_STATUSES),
    output: p.json<unknown>().nullable(),
    error: p.json<unknown>().nullable(),
    attempt: p.integer().default(1),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    completedAt: p.datetime().nullable(),
  },
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('durable_checkpoints'),
    // A completed checkpoint is history (ADR 0001, amendment "Checkpoints are history"): what a resumed run
    // replays instead of re-running its step, and what /verify and the evidence seals were derived from.
    // The code never deletes one: a retry drops its failed step's checkpoint only (runtime.ts `retry`).
    // Restrictive, so it narrows the isolation policy for every role bound by it (the application role,
    // the owner: FORCE); run retention's cascade from durable_runs is the foreign key's, which row-level
    // security does not govern (ADR 0011), and the application role may not delete a run (roles.ts).
    { name: 'durable_checkpoints_completed_no_delete', command: 'delete', type: 'restrictive', using: NOT_COMPLETED_CHECKPOINT_SQL },
  ],
  triggers: [
    {
      // Nor does it update one: a failure's upsert skips it (executor.ts `markFailed`, `on conflict … where
      // status <> 'completed'`), a decision completes a `waiting` one (runtime.ts `resume`). A trigger, not a
      // restrictive UPDATE policy: PostgreSQL checks an ON CONFLICT DO UPDATE's existing row against the
      // UPDATE policies before its WHERE, so such a policy made markFailed's upsert over a checkpoint another
      // execution completed (`completed-elsewhere`) raise instead of writing nothing; a BEFORE UPDATE
      // trigger fires only for rows the WHERE lets through. Every role but a superuser (as row-level security).
      name: COMPLETED_CHECKPOINT_TRIGGER,
      timing: 'before',
      events: ['update'],
      when: "(old.status = 'completed'::text)",
      body:
        'if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; ' +
        "raise exception 'checkpoint % of run % (step %) is completed: a completed checkpoint is never updated', old.sequence_num, old.run_id, old.step_name using errcode = 'insufficient_privilege';",
    },
  ],
});
export type IDurableCheckpoint = InferEntity<typeof DurableCheckpoint>;
