import { defineEntity, p, type InferEntity, type TriggerDef } from '@mikro-orm/core';
import { BY_TABLE_OWNER, TENANT_SETTING, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';
import { ACTIVE_RUN_STATUSES, DurableRun } from './durable-run.entity.ts';

export const CHECKPOINT_STATUSES = ['started', 'completed', 'failed', 'waiting'] as const;
export type CheckpointStatus = (typeof CHECKPOINT_STATUSES)[number];

/**
 * A checkpoint that is not (yet) completed, as PostgreSQL prints the predicate back from pg_policies (so
 * the schema diff is empty): the only rows the restrictive delete policy below lets anyone bound by it delete.
 */
export const NOT_COMPLETED_CHECKPOINT_SQL = `(status <> 'completed'::text)`;
/** The trigger that refuses any update of a completed checkpoint (ADR 0001, amendment "Checkpoints are history"). */
export const COMPLETED_CHECKPOINT_TRIGGER = 'completed_is_history';
/** The triggers that keep a run's checkpoints in the order of its steps: see stepOrderTriggers. */
export const STEP_ORDER_INSERT_TRIGGER = 'follows_its_predecessor';
export const STEP_ORDER_UPDATE_TRIGGER = 'completes_only_a_wait';

/**
 * Within the row's run (same tenant, its run row by its key): the checkpoint's sequence_num among the run's
 * `step_count` steps (fixed at the run's start by its workflow version; the application role cannot update
 * it), and the checkpoint before it, if any, completed — each a primary-key read. `run` is the run row's
 * condition on its status, as the code's own guards write it (`status || ''`: found by its key, never through
 * the partial index of active runs).
 */
function inItsRunAfterItsPredecessor(run: string): string {
  return (
    `exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and ${run} ` +
    'and new.sequence_num between 1 and r.step_count and (new.sequence_num = 1 or exists (select from public.durable_checkpoints c ' +
    "where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.sequence_num = new.sequence_num - 1 and c.status = 'completed')))"
  );
}

/**
 * A run's checkpoints follow its steps' order (ADR 0001, amendment "A step's checkpoint follows its
 * predecessor"). The application role writes checkpoints (it runs the steps), and a statement of its own could
 * write a later step's — checkpoint 4 naming a pack of its making while step 2 still ran —, which the run's
 * next job replays instead of running the steps between. Before insert, a checkpoint that a replay or a resume
 * trusts (`completed`, `waiting`; `started`, which the code never writes) is refused (42501) unless its run is
 * active, it is one of the run's steps, and the checkpoint before it is completed (a first step has none).
 * Every step passes: it runs only once its predecessor committed, in a transaction of its own (a group commit,
 * ADR 0007, shares a commit between different runs' steps, each statement under its own tenant, and this is
 * checked at the statement, not the commit), and its statement inserts the checkpoint before it moves the run
 * (the run CTE reads the checkpoint CTE's row). A `failed` one is not held: a failure's upsert (executor.ts
 * `markFailed`) records where the run stands, its run possibly ended meanwhile (a cancel), and what it stores
 * is never replayed (a retry deletes it). Before update, a checkpoint that is not completed (a completed one is
 * never updated: COMPLETED_CHECKPOINT_TRIGGER) becomes anything but `failed` only as a decision's resume makes
 * it (runtime.ts `resume`): `waiting` to `completed`, its run still waiting. Completed checkpoints are never
 * deleted nor updated, so a predecessor found completed stays so. The owner (and a superuser: migrations,
 * repairs, fixtures) is not held, asked only on the refusal's path.
 */
export function stepOrderTriggers(): TriggerDef[] {
  const active = `(r.status || '') in (${ACTIVE_RUN_STATUSES.map((st) => `'${st}'`).join(', ')})`;
  // A run that ended since its step read it (a cancel, another execution): refused as the checkpoint's own guard on
  // the run refuses it a moment later in the same statement (DX001, durable_expect), which the executor takes as
  // the run no longer active — read it again, end quietly, or a lost race to another execution that ended it —,
  // not as the step failing (retried with backoff; a failed checkpoint on a cancelled run at its last attempt).
  const ended =
    `if exists (select from public.durable_runs r where r.tenant_id = new.tenant_id and r.id = new.run_id and not ${active}) then ` +
    "raise exception 'checkpoint % of run % (step %, %): the run is no longer active', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'DX001'; end if; ";
  const refuse = (what: string, ifEnded = '') =>
    `if ${BY_TABLE_OWNER} then return new; end if; ${ifEnded}` +
    `raise exception 'checkpoint % of run % (step %, %): ${what}', new.sequence_num, new.run_id, new.step_name, new.status using errcode = 'insufficient_privilege';`;
  return [
    {
      name: STEP_ORDER_INSERT_TRIGGER,
      timing: 'before',
      events: ['insert'],
      when: "(new.status <> 'failed'::text)",
      body:
        `if ${inItsRunAfterItsPredecessor(active)} then return new; end if; ` +
        refuse("a step''s checkpoint is written while its run is active, within its steps, once the step before it completed", ended),
    },
    {
      name: STEP_ORDER_UPDATE_TRIGGER,
      timing: 'before',
      events: ['update'],
      when: "((old.status <> 'completed'::text) AND (new.status <> 'failed'::text))",
      body:
        `if old.status = 'waiting' and new.status = 'completed' and ${inItsRunAfterItsPredecessor("(r.status || '') = 'waiting'")} then return new; end if; ` +
        refuse("a checkpoint that is not completed becomes only failed, or completed from waiting while its run waits"),
    },
  ];
}

/**
 * The durable record of one step of one run. Written in the same transaction as the step's
 * effects; its primary key (tenant, run, sequence_num) makes a concurrent second execution roll back.
 * `id` is kept (written, never looked up) but not indexed: every statement finds a checkpoint by its
 * key, and an index on a random uuid alone cost every checkpoint insert a second B-tree insert
 * (docs/performance-history.md, session 24).
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
    // Each step's checkpoint after its predecessor's (ADR 0001, amendment "A step's checkpoint follows its predecessor").
    ...stepOrderTriggers(),
  ],
});
export type IDurableCheckpoint = InferEntity<typeof DurableCheckpoint>;

/** The trigger that holds a step's row to its step's checkpoint: see committedWithItsStep. */
export const STEP_ROW_TRIGGER = 'written_by_its_step';

/**
 * A row a workflow step writes — an evidence pack, an approval request — commits only with the checkpoint
 * of that step that names it (ADR 0001, amendment "A step's rows commit with its checkpoint"): the
 * application role may insert such rows, and a statement of its own (a bug, a compromised API or worker
 * process) could write one for a run that has not reached the step, which the step then fails on (the row's
 * unique key) or `/verify` and the approvers take for the step's. The step writes its rows and its
 * checkpoint in one transaction (ADR 0005), the checkpoint last: a constraint trigger after insert,
 * deferred to the commit (its migration creates it DEFERRABLE INITIALLY DEFERRED; the schema generator
 * compares timing, events and body only), refuses (42501) the row unless the run's checkpoint of `step`,
 * in one of `statuses`, has each output field of `names` equal to the row's column (`->>`: as text).
 * A completed checkpoint is never updated (COMPLETED_CHECKPOINT_TRIGGER), and the row's own unique key
 * keeps a second one out once the step committed. At the commit the tenant setting is the last one the
 * transaction made — under group commit (ADR 0007) another member's tenant —, so the check reads the
 * checkpoints under the row's own tenant (which the row's isolation policy checked at its insert) and
 * puts the setting back as it was. The owner (and a superuser) is not held: migrations, repairs, fixtures.
 */
export function committedWithItsStep(args: { step: string; statuses: readonly CheckpointStatus[]; names: Record<string, string>; row: string }): TriggerDef {
  const fields = Object.entries(args.names)
    .map(([field, column]) => ` and c.output->>'${field}' = new.${column}::text`)
    .join('');
  return {
    name: STEP_ROW_TRIGGER,
    timing: 'after',
    events: ['insert'],
    body:
      `if ${BY_TABLE_OWNER} then return null; end if; ` +
      `declare setting text := current_setting('${TENANT_SETTING}', true); begin perform set_config('${TENANT_SETTING}', new.tenant_id::text, true); ` +
      `if not exists (select from public.durable_checkpoints c where c.tenant_id = new.tenant_id and c.run_id = new.run_id and c.step_name = '${args.step}' ` +
      `and c.status in (${args.statuses.map((st) => `'${st}'`).join(', ')})${fields}) then ` +
      `raise exception '${args.row} % names run % of tenant %, whose ${args.step} step''s checkpoint does not name it: it is written by that step, with its checkpoint', new.id, new.run_id, new.tenant_id using errcode = 'insufficient_privilege'; end if; ` +
      `perform set_config('${TENANT_SETTING}', coalesce(setting, ''), true); end; return null;`,
  };
}
