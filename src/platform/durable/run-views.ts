import { z, type ZodType } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES, type RunStatus } from './durable-run.entity.ts';
import { CHECKPOINT_STATUSES, type CheckpointStatus } from './durable-checkpoint.entity.ts';
import { isoTime, toIsoTime, toIsoTimeOrNull } from '../http/iso-time.ts';
import type { RouteContext, RouteResult } from '../http/route.ts';
import { currentTraceContext } from '../telemetry/trace-context.ts';
import { RUN_RETRY_HISTORY_MAX, type DurableRuntime, type RunRow } from './runtime.ts';

/**
 * The pieces of a run's API body that every workflow's routes share (the golden path's and the
 * partner offboarding's): the 202 of a submission, a step's and a run's failure, the progress, and
 * each step's view from its checkpoint. A workflow's module builds its own run view from them, with
 * its own step-output schema and its own OpenAPI component id.
 */
export const runStatusSchema = z.enum(RUN_STATUSES);
export const count = z.number().int().min(0);

export const runAccepted = z
  .strictObject({
    run_id: z.uuid(),
    status: runStatusSchema,
    correlation_id: z.string(),
    links: z.strictObject({ self: z.string() }),
  })
  .meta({ id: 'RunAccepted' });
export type RunAccepted = z.infer<typeof runAccepted>;

/** Why a step failed for good (the executor's record of the error). */
export const stepFailure = z.strictObject({ code: z.string(), message: z.string() });
/** Why a run failed: its failed step's error, with that step. */
export const runFailure = stepFailure.extend({
  step: z.string(),
  sequence_num: z.number().int().min(1),
  crashes: z.number().int().min(1).optional().describe('step_crashed_worker only: how many times in a row the step lost its worker process while it ran'),
  on_failed_error: stepFailure
    .optional()
    .describe("What the workflow's onFailed hook threw when the run failed (its writes rolled back alone: what it would have closed, such as a pending approval request, stays open); absent when it did not throw"),
});

export const runProgress = z.strictObject({ completed_steps: count, total_steps: count });

/** Why a run was cancelled: who cancelled it, and when (POST …/runs/:id/cancel). */
export const runCancellation = z.strictObject({
  code: z.literal('cancelled'),
  message: z.string(),
  cancelled_by: z.string().describe('The principal (token sub) that cancelled the run'),
  cancelled_at: isoTime,
});
export type RunCancellation = z.infer<typeof runCancellation>;

/** One retry of the run after it failed (POST …/runs/:id/retry): what it failed with, who retried it, and when. */
export const runRetry = z.strictObject({
  retry: z.number().int().min(1).describe('1 for the first retry'),
  retried_by: z.string().describe('The principal (token sub) that retried the run'),
  retried_at: isoTime,
  failed_at: isoTime.nullable().describe('When the run had failed'),
  error: runFailure.nullable().describe('What the run had failed with: its failed step'),
  attempts: count.nullable().describe('The attempts the failed step had spent; null when the run had no failed step recorded'),
});
export type RunRetryView = z.infer<typeof runRetry>;

/**
 * The retry fields of a run view: `retries`, its newest retries after it failed (RUN_RETRY_HISTORY_MAX,
 * oldest first), and `retry_count`, how often it was retried in all.
 */
export const runRetryFields = {
  retries: z
    .array(runRetry)
    .max(RUN_RETRY_HISTORY_MAX)
    .describe(`The newest retries of the run after it failed, up to ${RUN_RETRY_HISTORY_MAX}, oldest first: the failure each was retried from; empty for a run never retried. retry_count counts them all`),
  retry_count: count.describe(`How often the run was retried after it failed, in all (retries lists the newest ${RUN_RETRY_HISTORY_MAX})`),
};

/** The values of runRetryFields for a run (a history written before it was capped is cut here). */
export function toRunRetryFields(run: { retry_history: RunRetryView[] | null; retry_count: number }) {
  return { retries: (run.retry_history ?? []).slice(-RUN_RETRY_HISTORY_MAX), retry_count: run.retry_count };
}

/**
 * One run in a page of a workflow's runs (GET …/runs). A workflow's module gives it, and the page
 * (pageSchema), its own OpenAPI component ids (`RunSummary` and `RunPage` are the golden path's).
 */
export const runSummary = z.strictObject({
  run_id: z.uuid(),
  status: runStatusSchema,
  correlation_id: z.string(),
  progress: runProgress,
  created_at: isoTime,
  links: z.strictObject({ self: z.string() }),
});
export type RunSummary = z.infer<typeof runSummary>;

/** What a run's summary is built from: its row's few columns, and its completed steps. */
export type RunSummaryRow = Pick<RunRow, 'id' | 'status' | 'correlation_id' | 'step_count' | 'created_at'> & { completed: number };

export function toRunSummary(r: RunSummaryRow, runPath: (id: string) => string): RunSummary {
  return {
    run_id: r.id,
    status: r.status,
    correlation_id: r.correlation_id,
    progress: { completed_steps: r.completed, total_steps: r.step_count },
    created_at: toIsoTime(r.created_at),
    links: { self: runPath(r.id) },
  };
}

/** One step of a run, as a run view shows it; `output` is the workflow's step-output schema. */
export function stepViewSchema<O extends ZodType>(output: O) {
  return z.strictObject({
    sequence_num: z.number().int().min(1),
    name: z.string(),
    status: z.enum(['pending', ...CHECKPOINT_STATUSES]).describe('pending: not reached yet (no checkpoint)'),
    attempt: count,
    checkpointed_at: isoTime.nullable(),
    completed_at: isoTime.nullable(),
    output: output.nullable(),
    error: stepFailure.nullable(),
  });
}

/** A checkpoint as a run view reads it. `output` and `error` are jsonb: typed by the caller, where they are read. */
export interface CheckpointRow<O = unknown> {
  sequence_num: number;
  step_name: string;
  status: CheckpointStatus;
  attempt: number;
  output: O | null;
  error: z.infer<typeof stepFailure> | null;
  created_at: Date;
  completed_at: Date | null;
}

/** A run's checkpoints in step order, through the tenant's RLS. */
export function readCheckpoints<O>(em: EntityManager, tenantId: string, runId: string): Promise<CheckpointRow<O>[]> {
  return em.execute<CheckpointRow<O>[]>(
    `select sequence_num, step_name, status, attempt, output, error, created_at, completed_at from durable_checkpoints where tenant_id = ? and run_id = ? order by sequence_num`,
    [tenantId, runId],
  );
}

/** Every step of the run's workflow version, with its checkpoint where it has one (`pending` where not). */
export function toStepViews<O>(steps: CheckpointRow<O>[], stepNames: string[]) {
  const byNum = new Map(steps.map((s) => [s.sequence_num, s]));
  return stepNames.map((name, i) => {
    const cp = byNum.get(i + 1);
    return {
      sequence_num: i + 1,
      name,
      status: cp?.status ?? ('pending' as const),
      attempt: cp?.attempt ?? 0,
      checkpointed_at: toIsoTimeOrNull(cp?.created_at),
      completed_at: toIsoTimeOrNull(cp?.completed_at),
      output: cp?.output ?? null,
      error: cp?.error ?? null,
    };
  });
}

/**
 * A run's progress from its checkpoints (the live progress: the run row moves only with its status).
 * An ended run has no current step (an expired or failed one ended before its last).
 */
export function toRunProgress(run: { status: RunStatus; step_count: number }, steps: Array<{ status: CheckpointStatus }>) {
  const completed = steps.filter((s) => s.status === 'completed').length;
  const active = (ACTIVE_RUN_STATUSES as readonly string[]).includes(run.status);
  return { completed_steps: completed, total_steps: run.step_count, current_sequence_num: active ? Math.min(completed + 1, run.step_count) : null };
}

/**
 * The handler of a workflow's submission route (POST …/run, `idempotency: 'required'`): starts the run
 * of this submission in the request's transaction — or finds the one an earlier request with the same
 * Idempotency-Key started — and adds its run job after the commit (Postgres first, then Redis: a retry
 * of a half-finished submission re-enqueues idempotently; a run this request created carries its first
 * step's data in its job, ADR 0004). Answers 202 with the run's path in `Location`.
 */
export async function acceptRun(
  runtime: DurableRuntime,
  workflow: string,
  ctx: Pick<RouteContext, 'res' | 'em' | 'body' | 'principal' | 'correlationId' | 'idempotencyHash' | 'afterCommit'>,
  runPath: (id: string) => string,
): Promise<RouteResult<RunAccepted>> {
  const trace = currentTraceContext();
  const { run, created } = await runtime.start_run(ctx.em, workflow, {
    tenantId: ctx.principal.tenantId,
    principal: ctx.principal.sub,
    idempotencyHash: ctx.idempotencyHash,
    input: ctx.body,
    correlationId: ctx.correlationId,
    traceId: trace.traceId,
    traceparent: trace.traceparent,
  });
  ctx.res.locals.runId = run.id;
  if (run.status === 'pending' || run.status === 'running') ctx.afterCommit(() => runtime.ensureEnqueued(run, { carryFirst: created }));
  const self = runPath(run.id);
  const accepted: RunAccepted = { run_id: run.id, status: run.status, correlation_id: run.correlation_id, links: { self } };
  return { status: 202, headers: { Location: self }, body: accepted };
}

/**
 * The fields every run view starts with, in this order: the run, its progress and every step of its
 * workflow version with its checkpoint. A workflow's run view adds its own `output`, `error` and
 * `links` (and what else it has) after them.
 */
export function runViewShape<O extends ZodType>(stepOutput: O) {
  return {
    run_id: z.uuid(),
    workflow: z.string(),
    workflow_version: z.number().int().min(1),
    status: runStatusSchema,
    progress: runProgress.extend({
      current_sequence_num: z.number().int().min(1).nullable().describe('The step the run is at; null once it has ended'),
    }),
    correlation_id: z.string(),
    trace_id: z
      .string()
      .nullable()
      .describe(
        "The run's OpenTelemetry trace id, which leads to its trace in the tracing backend; null when the submission was not traced: tracing off, or a trace its sampler did not sample (OTEL_TRACES_SAMPLER). The correlation id is always there",
      ),
    submitted_by: z.string(),
    created_at: isoTime,
    updated_at: isoTime.describe("The run's last change of status"),
    completed_at: isoTime.nullable(),
    steps: z.array(stepViewSchema(stepOutput)),
  };
}

/** The values of runViewShape's fields for a run, its checkpoints and its workflow version's step names. */
export function runViewFields<O>(run: RunRow | Omit<RunRow, 'output' | 'error'>, steps: CheckpointRow<O>[], stepNames: string[]) {
  return {
    run_id: run.id,
    workflow: run.workflow,
    workflow_version: run.workflow_version,
    status: run.status,
    // The checkpoints are the live progress (the run row moves only with its status).
    progress: toRunProgress(run, steps),
    correlation_id: run.correlation_id,
    trace_id: run.trace_id,
    submitted_by: run.principal,
    created_at: toIsoTime(run.created_at),
    updated_at: toIsoTime(run.updated_at),
    completed_at: toIsoTimeOrNull(run.completed_at),
    steps: toStepViews(steps, stepNames),
  };
}
