import { z } from 'zod';
import type { RunRow } from '../../platform/durable/runtime.ts';
import {
  count,
  runAccepted,
  runFailure,
  runProgress as progress,
  runStatusSchema as runStatus,
  runViewFields,
  runViewShape,
  type CheckpointRow as AnyCheckpointRow,
  type RunAccepted,
} from '../../platform/durable/run-views.ts';
import { pageSchema } from '../../platform/http/cursor.ts';
import { isoTime, toIsoTime } from '../../platform/http/iso-time.ts';
import { approvalPacketSchema, dossierSchema, economicsSchema, evidenceSchema } from './golden-path.schemas.ts';

/**
 * The bodies the golden-path routes answer, as the OpenAPI document publishes them. The functions
 * that build them return these schemas' types, so a field the view adds, drops or retypes fails the
 * typecheck; what comes from jsonb columns is typed at the one place it is read (see below), and the
 * OpenAPI test validates real responses against the published schemas.
 */
export const BASE = '/api/v1';

const runId = z.uuid();

export { runAccepted, type RunAccepted };
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

export const runView = z
  .strictObject({
    ...runViewShape(stepOutput),
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
export type CheckpointRow = AnyCheckpointRow<z.infer<typeof stepOutput>>;

/** The golden-path run row: its jsonb `output`, `error` and `retry_history` as the workflow's finish, the executor and a retry write them. */
export type GoldenPathRunRow = Omit<RunRow, 'output' | 'error'> & { output: RunView['output']; error: RunView['error']; retry_history: RunRetryView[] | null };

export const runPath = (id: string) => `${BASE}/golden-path/runs/${id}`;

export function toRunView(run: GoldenPathRunRow, steps: CheckpointRow[], stepNames: string[]): RunView {
  // By the steps' names: each workflow version may place them elsewhere.
  const outputOf = (name: string) => steps.find((s) => s.step_name === name)?.output;
  const evidenceOut = outputOf('evidence-pack');
  const approvalOut = outputOf('approval-packet');
  const evidence = evidenceOut && 'evidence_pack_id' in evidenceOut ? evidenceOut.evidence_pack_id : undefined;
  const approval = approvalOut && 'approval_request_id' in approvalOut ? approvalOut.approval_request_id : undefined;
  return {
    ...runViewFields(run, steps, stepNames),
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
