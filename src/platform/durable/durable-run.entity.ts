import { defineEntity, p, type InferEntity } from '@mikro-orm/core';
import { retentionClockTrigger, SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';
import { PAST_RETENTION_FLOOR_SQL, RUN_RETENTION_FLOOR_MS } from '../config/run-retention-floor.ts';

export { RUN_RETENTION_FLOOR_MS };

/** Non-terminal statuses: the sweeper looks only at these. */
export const ACTIVE_RUN_STATUSES = ['pending', 'running', 'waiting'] as const;
export const TERMINAL_RUN_STATUSES = ['completed', 'failed', 'rejected', 'approval_expired', 'cancelled'] as const;
export const RUN_STATUSES = [...ACTIVE_RUN_STATUSES, ...TERMINAL_RUN_STATUSES] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];
/** A run that has ended, as PostgreSQL prints the predicate back from pg_policies (so the schema diff is empty). */
export const ENDED_RUN_SQL = `(status = ANY (ARRAY[${TERMINAL_RUN_STATUSES.map((s) => `'${s}'::text`).join(', ')}]))`;

/**
 * The retries a run's `retry_history` keeps: the newest this many, oldest first; its `retry_count`
 * counts them all. Trimmed by the retry's own update (ADR 0009, *Where the failure goes*): a failure
 * that does not go away, retried by a client on every `failed`, grew the row, every view of the run
 * and every retry's answer stored under its Idempotency-Key by one entry a retry, without end. The
 * trigger ENDED_RUN_TRIGGER checks a retry's history against it.
 */
export const RUN_RETRY_HISTORY_MAX = 20;

/** The trigger that refuses any update of an ended run but a retry of a failed one. */
export const ENDED_RUN_TRIGGER = 'ended_is_history';

/** One execution of a workflow for one tenant; unique per (tenant, idempotency hash). */
export const DurableRun = defineEntity({
  name: 'DurableRun',
  tableName: 'durable_runs',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    workflow: p.string().length(100),
    workflowVersion: p.integer(),
    idempotencyHash: p.string().length(64),
    status: p.enum(RUN_STATUSES),
    principal: p.string().length(255),
    input: p.json<unknown>(),
    output: p.json<unknown>().nullable(),
    error: p.json<unknown>().nullable(),
    correlationId: p.string().length(128),
    traceId: p.string().length(32).nullable(),
    /** W3C traceparent of the submission, so a resumed step joins the same trace. */
    traceparent: p.string().length(64).nullable(),
    /**
     * Highest completed sequence_num as of the run's last move to running or to an end (its first
     * step, a resume, its end; a wait leaves it as it was, so a run waiting at step 3 may read 1):
     * the checkpoints are the live progress
     * (COMPLETED_STEPS_SQL); the row is not rewritten for every step (ADR 0005).
     */
    sequenceNum: p.integer().default(0),
    stepCount: p.integer(),
    /**
     * The worker (instance id) that last moved the run's status (null once it waits, or ends other than by
     * its last step's commit, which names its worker), picked it up again past step 1 (after a wait or a
     * retry: the job's first message, ADR 0016's second amendment) or took its job over after a stall, and until when
     * its claim stood: after the next stall, the holder whose liveness tells a crash from a lock that
     * lapsed (ADR 0016, amendment).
     */
    leaseOwner: p.string().length(128).nullable(),
    leaseExpiresAt: p.datetime().nullable(),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    completedAt: p.datetime().nullable(),
    /**
     * How often an API client retried the run after it failed (POST …/runs/:id/retry): the generation
     * of its run jobs' ids, so a retried run's job never collides with the failed one (ADR 0009).
     */
    retryCount: p.integer().default(0),
    /**
     * One entry per retry, oldest first: who retried it and when, and the failure it was retried from
     * (the run's error, its failed step's last attempt, when it failed). Null until the first retry.
     * The newest RUN_RETRY_HISTORY_MAX (runtime.ts) only: `retryCount` counts every retry.
     */
    retryHistory: p.json<unknown>().nullable(),
    /**
     * The step (sequence_num) whose executions were cut off by the loss of their worker (a stalled run
     * job delivered again: SIGKILL, OOM, a crash in native code), and how many times in a row
     * (`crashCount`): bumped in a statement of its own, committed before the step runs again, only by a
     * delivery that follows a stall of a worker no longer connected to Redis (a live one's lock lapsed:
     * not a crash). At STEP_MAX_CRASHES the step is not run again and the run fails
     * (`step_crashed_worker`, ADR 0016); a retry clears both.
     */
    crashSeq: p.integer().nullable(),
    crashCount: p.integer().default(0),
    /**
     * How many of the run's jobs (of its current generation, at step `readTimeoutSeq`) ended without a
     * step because every attempt of theirs met a statement or lock timeout reading the run (57014,
     * 55P03): ended as infrastructure, the run left as it is, and the sweeper adds a new job, whose
     * attempts start afresh. Bumped by each such job of a pending or running run in a statement of its
     * own; when it reaches the attempts of that step, the run fails `infrastructure_exhausted` instead of
     * being re-enqueued for ever (ADR 0002, amendment). A job at a later step than `readTimeoutSeq` (the
     * run moved on meanwhile) starts the count afresh at 1, as `crashSeq` does `crashCount`, so transient
     * timeouts at different steps over a run's life never add up. A retry clears both.
     */
    readTimeoutJobs: p.integer().default(0),
    /** The step (sequence_num) the jobs counted in `readTimeoutJobs` were at; null while none was counted. */
    readTimeoutSeq: p.integer().nullable(),
    /**
     * Which job ends `readTimeoutJobs` counted, newest first, the last READ_TIMEOUT_KEYS_MAX (executor.ts)
     * only: each a job's id, its creation time, its finished attempts and the step it ended at
     * (`<id>@<timestamp>#<attemptsMade>/<sequence_num>`).
     * An end already here is not counted again — two executions of one job at once (a stalled job
     * re-delivered while its first worker still runs) or the count sent again end one job once. Null while
     * none was counted; a retry clears it.
     */
    readTimeoutKeys: p.array().columnType('text[]').nullable(),
  },
  uniques: [
    { name: 'durable_runs_tenant_hash_unique', properties: ['tenantId', 'idempotencyHash'] },
    // The target of the checkpoints' (tenant_id, run_id) foreign key: a checkpoint names its tenant's run only.
    { name: 'durable_runs_tenant_id_id_unique', properties: ['tenantId', 'id'] },
  ],
  indexes: [
    // A workflow's runs list (GET …/runs), newest first, one range per status merged in order (run-routes.ts):
    // in (tenant_id, created_at, id) a page of one workflow, or of one status, walked and filtered out
    // every run of the others (a tenant's few failed runs under its whole history). Two partial indexes,
    // ended runs and active ones, never one over every run: a tenant-leading index that holds every row
    // is one a statement naming a run by (tenant_id, id) can be planned onto (`id` a condition behind
    // `workflow` and `status`, the tenant's runs walked to test it), and was on tables without
    // statistics — each step's statements walked the tenant's runs (PostgreSQL CPU per run up two
    // thirds in the benchmark). Statements naming one run test `status || ''`, which proves neither
    // predicate. An active run's step updates skip the ended runs' index; a run enters it once, as it ends.
    { name: 'durable_runs_tenant_workflow_ended_index', properties: ['tenantId', 'workflow', 'status', 'createdAt', 'id'], where: `status in (${TERMINAL_RUN_STATUSES.map((s) => `'${s}'`).join(', ')})` },
    { name: 'durable_runs_tenant_workflow_active_status_index', properties: ['tenantId', 'workflow', 'status', 'createdAt', 'id'], where: "status in ('pending', 'running', 'waiting')" },
    // Runs in flight only, pending or running: admission's count (admission.ts: `status in ('pending',
    // 'running')`, its predicate exactly, so it reads the runs it counts and nothing else), a list's
    // pending and running branches, a bulk cancel of those statuses. Over every active run, (tenant_id,
    // status) where pending, running or waiting, the count was planned onto indexes of active runs with
    // `status` a filter or behind `workflow`, walking the tenant's waiting runs (those parked on a human
    // approval: many) on every submission. Partial, so that statements naming one run by (tenant_id, id)
    // can never be planned onto it: on a table without statistics every tenant-leading index costs the
    // same, and a cached plan that scans a tenant's runs by status grows with the tenant (ADR 0004,
    // "Plans cached before statistics"). It replaced that index: a step's update enters as many indexes.
    { name: 'durable_runs_tenant_workflow_in_flight_index', properties: ['tenantId', 'workflow', 'status', 'createdAt', 'id'], where: "status in ('pending', 'running')" },
    // A tenant's active runs of one workflow, oldest first: a bulk cancel's batches of every active status
    // (run-cancel.ts; of fewer, one range per status, merged) read them in that order and stop at the batch, whatever number of ended runs the tenant keeps; in
    // (tenant_id, created_at, id) they walked every ended run older than the first active one.
    { name: 'durable_runs_tenant_workflow_active_index', properties: ['tenantId', 'workflow', 'createdAt', 'id'], where: "status in ('pending', 'running', 'waiting')" },
    // The sweeper's pages (list_incomplete: one range per status from its cursor, in (updated_at, id)
    // order) and run retention's ended runs by age. Without `id` a page sorted every run behind the cursor.
    { name: 'durable_runs_status_updated_id_index', properties: ['status', 'updatedAt', 'id'] },
  ],
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('durable_runs'),
    // The recovery sweeper's narrow cross-tenant read: only as the NOLOGIN system role, only the
    // columns granted to it (ids, status, progress), never input or output. See ADR 0003.
    { name: 'durable_runs_system_sweep', command: 'select', roles: [SYSTEM_ROLE], using: 'true' },
    // Run retention (ADR 0011): the same role may delete a run that has ended, never an active one, and
    // not before RUN_RETENTION_FLOOR_MS has passed since its row last moved (its end); how much longer is
    // the job's condition (RUN_RETENTION). Its checkpoints go with it (on delete cascade). The floor is
    // here because the application role reaches this role: any of its statements could otherwise delete
    // every tenant's runs the moment they end.
    { name: 'durable_runs_system_retention', command: 'delete', roles: [SYSTEM_ROLE], using: `(${ENDED_RUN_SQL} AND ${PAST_RETENTION_FLOOR_SQL})` },
  ],
  triggers: [
    {
      // An ended run is history, as its completed checkpoints are (ADR 0001, amendment "Checkpoints are
      // history"): its status, output, error and end are what /verify, the webhooks and the runs list
      // report. The code moves an ended run only one way: a retry brings a failed run back (runtime.ts
      // `retry`: failed → pending or running); every other statement names active statuses in its WHERE,
      // and a BEFORE UPDATE trigger fires only for rows it lets through. Every role but a superuser.
      // A retry must keep the failure it clears (ADR 0001, amendment "A retry keeps its failure"): its
      // retry_count one up, its retry_history the old one with one entry appended (the newest
      // RUN_RETRY_HISTORY_MAX kept, as runtime.retry trims it) naming that count and the run's error, and
      // no output, error or end. Else `set status = 'running', error = null, retry_history = null`
      // erased the failure, and a second statement could complete the run with any output.
      name: ENDED_RUN_TRIGGER,
      timing: 'before',
      events: ['update'],
      when: `(old.status = ANY (ARRAY[${TERMINAL_RUN_STATUSES.map((s) => `'${s}'::text`).join(', ')}]))`,
      body:
        'if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then return new; end if; ' +
        "if old.status = 'failed' and new.status in ('pending', 'running') then " +
        'if new.retry_count = old.retry_count + 1 and new.output is null and new.error is null and new.completed_at is null ' +
        "and new.retry_history -> -1 -> 'retry' = to_jsonb(new.retry_count) " +
        "and new.retry_history -> -1 -> 'error' = coalesce(old.error, 'null'::jsonb) " +
        `and new.retry_history = jsonb_path_query_array(coalesce(old.retry_history, '[]'::jsonb) || jsonb_build_array(new.retry_history -> -1), '$[last - ${RUN_RETRY_HISTORY_MAX - 1} to last]') then return new; end if; ` +
        "raise exception 'run % failed: a retry raises retry_count by one and appends the failure it clears to retry_history, and writes no output', old.id using errcode = 'insufficient_privilege'; end if; " +
        "raise exception 'run % has ended (%): an ended run is never updated, but a failed one retried', old.id, old.status using errcode = 'insufficient_privilege';",
    },
    // The floor of durable_runs_system_retention reads updated_at: the database's time of the run's last
    // move, which the application role cannot backdate (ADR 0011, amendment "The floor's clock is the database's").
    retentionClockTrigger(),
  ],
});
export type IDurableRun = InferEntity<typeof DurableRun>;
