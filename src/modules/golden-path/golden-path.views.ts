import { z } from 'zod';
import type { RunRow } from '../../platform/durable/runtime.ts';
import {
  runAccepted,
  runCancellation,
  runFailure,
  runRetryFields,
  runSummary as anyRunSummary,
  runViewFields,
  runViewShape,
  toRunRetryFields,
  type CheckpointRow as AnyCheckpointRow,
  type RunAccepted,
  type RunRetryView,
} from '../../platform/durable/run-views.ts';
import { pageSchema } from '../../platform/http/cursor.ts';
import { approvalPacketSchema, dossierSchema, economicsSchema, evidenceSchema } from './golden-path.schemas.ts';

/**
 * The bodies the golden-path routes answer, as the OpenAPI document publishes them. The functions
 * that build them return these schemas' types, so a field the view adds, drops or retypes fails the
 * typecheck; what comes from jsonb columns is typed at the one place it is read (see below), and the
 * OpenAPI test validates real responses against the published schemas.
 */
export const BASE = '/api/v1';

export { runAccepted, type RunAccepted };
/** Each step's output, as its schema in the workflow validated it when it was checkpointed. */
const stepOutput = z.union([dossierSchema, economicsSchema, approvalPacketSchema, evidenceSchema]);

export const runView = z
  .strictObject({
    ...runViewShape(stepOutput),
    output: evidenceSchema.nullable().describe('The evidence step\'s output once the run is completed or rejected'),
    error: z.union([runFailure, runCancellation]).nullable().describe('Why a failed run failed (its step), or who cancelled a cancelled one'),
    ...runRetryFields,
    links: z.strictObject({
      self: z.string(),
      approval: z.string().optional(),
      evidence: z.string().optional(),
      verify: z.string().optional(),
    }),
  })
  .meta({ id: 'Run' });
export type RunView = z.infer<typeof runView>;

export const runSummary = anyRunSummary.meta({ id: 'RunSummary' });

export const runPage = pageSchema(runSummary).meta({ id: 'RunPage' });

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
    ...toRunRetryFields(run),
    links: {
      self: runPath(run.id),
      ...(approval ? { approval: `${BASE}/approvals/${approval}` } : {}),
      ...(evidence ? { evidence: `${BASE}/evidence/${evidence}`, verify: `${BASE}/evidence/${evidence}/verify` } : {}),
    },
  };
}

