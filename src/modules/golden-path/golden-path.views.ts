import { z } from 'zod';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES } from '../../platform/durable/durable-run.entity.ts';
import { CHECKPOINT_STATUSES, type CheckpointStatus } from '../../platform/durable/durable-checkpoint.entity.ts';
import type { RunRow } from '../../platform/durable/runtime.ts';
import { pageSchema } from '../../platform/http/cursor.ts';
import { isoTime, toIsoTime, toIsoTimeOrNull } from '../../platform/http/iso-time.ts';
import { approvalPacketSchema, dossierSchema, economicsSchema, evidenceSchema } from './golden-path.schemas.ts';

/**
 * The bodies the golden-path routes answer, as the OpenAPI document publishes them. The functions
 * that build them return these schemas' types, so a field the view adds, drops or retypes fails the
 * typecheck; what comes from jsonb columns is typed at the one place it is read (see below), and the
 * OpenAPI test validates real responses against the published schemas.
 */
export const BASE = '/api/v1';

const runStatus = z.enum(RUN_STATUSES);
const runId = z.uuid();
const count = z.number().int().min(0);

export const runAccepted = z
  .strictObject({
    run_id: runId,
    status: runStatus,
    correlation_id: z.string(),
    links: z.strictObject({ self: z.string() }),
  })
  .meta({ id: 'RunAccepted' });
export type RunAccepted = z.infer<typeof runAccepted>;

/** Why a step failed for good (the executor's record of the error). */
const stepFailure = z.strictObject({ code: z.string(), message: z.string() });
/** Why a run failed: its failed step's error, with that step. */
const runFailure = stepFailure.extend({ step: z.string(), sequence_num: z.number().int().min(1) });
/** Why a run was cancelled: who cancelled it, and when (POST …/runs/:id/cancel). */
const runCancellation = z.strictObject({
  code: z.literal('cancelled'),
  message: z.string(),
  cancelled_by: z.string().describe('The principal (token sub) that cancelled the run'),
  cancelled_at: isoTime,
});
export type RunCancellation = z.infer<typeof runCancellation>;
/** One retry of the run after it failed (POST …/runs/:id/retry): what it failed with, who retried it, and when. */
const runRetry = z.strictObject({
  retry: z.number().int().min(1).describe('1 for the first retry'),
  retried_by: z.string().describe('The principal (token sub) that retried the run'),
  retried_at: isoTime,
  failed_at: isoTime.nullable().describe('When the run had failed'),
  error: runFailure.nullable().describe('What the run had failed with: its failed step'),
  attempts: count.nullable().describe('The attempts the failed step had spent; null when the run had no failed step recorded'),
});
export type RunRetryView = z.infer<typeof runRetry>;
/** Each step's output, as its schema in the workflow validated it when it was checkpointed. */
const stepOutput = z.union([dossierSchema, economicsSchema, approvalPacketSchema, evidenceSchema]);

const progress = z.strictObject({ completed_steps: count, total_steps: count });

const stepView = z.strictObject({
  sequence_num: z.number().int().min(1),
  name: z.string(),
  status: z.enum(['pending', ...CHECKPOINT_STATUSES]).describe('pending: not reached yet (no checkpoint)'),
  attempt: count,
  checkpointed_at: isoTime.nullable(),
  completed_at: isoTime.nullable(),
  output: stepOutput.nullable(),
  error: stepFailure.nullable(),
});

export const runView = z
  .strictObject({
    run_id: runId,
    workflow: z.string(),
    workflow_version: z.number().int().min(1),
    status: runStatus,
    progress: progress.extend({
      current_sequence_num: z.number().int().min(1).nullable().describe('The step the run is at; null once it has ended'),
    }),
    correlation_id: z.string(),
    trace_id: z.string().nullable(),
    submitted_by: z.string(),
    created_at: isoTime,
    updated_at: isoTime.describe('The run\'s last change of status'),
    completed_at: isoTime.nullable(),
    steps: z.array(stepView),
    output: evidenceSchema.nullable().describe('The evidence step\'s output once the run is completed or rejected'),
    error: z.union([runFailure, runCancellation]).nullable().describe('Why a failed run failed (its step), or who cancelled a cancelled one'),
    retries: z.array(runRetry).describe('Each retry of the run after it failed, oldest first: the failure it was retried from; empty for a run never retried'),
    links: z.strictObject({
      self: z.string(),
      approval: z.string().optional(),
      evidence: z.string().optional(),
      verify: z.string().optional(),
    }),
  })
  .meta({ id: 'Run' });
export type RunView = z.infer<typeof runView>;

export const runSummary = z
  .strictObject({
    run_id: runId,
    status: runStatus,
    correlation_id: z.string(),
    progress,
    created_at: isoTime,
    links: z.strictObject({ self: z.string() }),
  })
  .meta({ id: 'RunSummary' });
export type RunSummary = z.infer<typeof runSummary>;

export const runPage = pageSchema(runSummary).meta({ id: 'RunPage' });
export type RunPage = z.infer<typeof runPage>;

/** A checkpoint as the run view reads it. `output` and `error` are jsonb: typed here, where they are read. */
export interface CheckpointRow {
  sequence_num: number;
  step_name: string;
  status: CheckpointStatus;
  attempt: number;
  output: z.infer<typeof stepOutput> | null;
  error: z.infer<typeof stepFailure> | null;
  created_at: Date;
  completed_at: Date | null;
}

/** The golden-path run row: its jsonb `output`, `error` and `retry_history` as the workflow's finish, the executor and a retry write them. */
export type GoldenPathRunRow = Omit<RunRow, 'output' | 'error'> & { output: RunView['output']; error: RunView['error']; retry_history: RunRetryView[] | null };

export const runPath = (id: string) => `${BASE}/golden-path/runs/${id}`;
const isActiveStatus = (status: string) => (ACTIVE_RUN_STATUSES as readonly string[]).includes(status);

export function toRunView(run: GoldenPathRunRow, steps: CheckpointRow[], stepNames: string[]): RunView {
  const byNum = new Map(steps.map((s) => [s.sequence_num, s]));
  // The checkpoints are the live progress (the run row moves only with its status).
  const completed = steps.filter((s) => s.status === 'completed').length;
  // By the steps' names: each workflow version may place them elsewhere.
  const outputOf = (name: string) => steps.find((s) => s.step_name === name)?.output;
  const evidenceOut = outputOf('evidence-pack');
  const approvalOut = outputOf('approval-packet');
  const evidence = evidenceOut && 'evidence_pack_id' in evidenceOut ? evidenceOut.evidence_pack_id : undefined;
  const approval = approvalOut && 'approval_request_id' in approvalOut ? approvalOut.approval_request_id : undefined;
  return {
    run_id: run.id,
    workflow: run.workflow,
    workflow_version: run.workflow_version,
    status: run.status,
    // An ended run has no current step (an expired or failed one ended before its last).
    progress: { completed_steps: completed, total_steps: run.step_count, current_sequence_num: isActiveStatus(run.status) ? Math.min(completed + 1, run.step_count) : null },
    correlation_id: run.correlation_id,
    trace_id: run.trace_id,
    submitted_by: run.principal,
    created_at: toIsoTime(run.created_at),
    updated_at: toIsoTime(run.updated_at),
    completed_at: toIsoTimeOrNull(run.completed_at),
    steps: stepNames.map((name, i) => {
      const cp = byNum.get(i + 1);
      return {
        sequence_num: i + 1,
        name,
        status: cp?.status ?? 'pending',
        attempt: cp?.attempt ?? 0,
        checkpointed_at: toIsoTimeOrNull(cp?.created_at),
        completed_at: toIsoTimeOrNull(cp?.completed_at),
        output: cp?.output ?? null,
        error: cp?.error ?? null,
      };
    }),
    output: run.output,
    error: run.error,
    retries: run.retry_history ?? [],
    links: {
      self: runPath(run.id),
      ...(approval ? { approval: `${BASE}/approvals/${approval}` } : {}),
      ...(evidence ? { evidence: `${BASE}/evidence/${evidence}`, verify: `${BASE}/evidence/${evidence}/verify` } : {}),
    },
  };
}

export function toRunSummary(r: RunRow & { completed: number }): RunSummary {
  return {
    run_id: r.id,
    status: r.status,
    correlation_id: r.correlation_id,
    progress: { completed_steps: r.completed, total_steps: r.step_count },
    created_at: toIsoTime(r.created_at),
    links: { self: runPath(r.id) },
  };
}
