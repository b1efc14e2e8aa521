import { z } from 'zod';
import type { RunRow } from '../../platform/durable/runtime.ts';
import { runCancellation, runFailure, runRetryFields, runSummary, runViewFields, runViewShape, toRunRetryFields, type CheckpointRow, type RunRetryView } from '../../platform/durable/run-views.ts';
import { pageSchema } from '../../platform/http/cursor.ts';
import { archivedSchema, frozenSchema, settlementSchema } from './partner-offboarding.schemas.ts';

export const OFFBOARDING_BASE = '/api/v1/partner-offboarding';
export const offboardingRunPath = (id: string) => `${OFFBOARDING_BASE}/runs/${id}`;

/** Each step's output, as its schema in the workflow validated it when it was checkpointed. */
const stepOutput = z.union([frozenSchema, settlementSchema, archivedSchema]);
export type OffboardingCheckpointRow = CheckpointRow<z.infer<typeof stepOutput>>;
export type OffboardingStepOutput = z.infer<typeof stepOutput>;

/** GET /api/v1/partner-offboarding/runs/:id (and the cancel's and the retry's 200). Its own component id: `Run` is the golden path's. */
export const offboardingRunView = z
  .strictObject({
    ...runViewShape(stepOutput),
    output: archivedSchema.nullable().describe("The archive step's output once the run is completed"),
    error: z.union([runFailure, runCancellation]).nullable().describe('Why a failed run failed (its step), or who cancelled a cancelled one'),
    ...runRetryFields,
    links: z.strictObject({ self: z.string() }),
  })
  .meta({ id: 'PartnerOffboardingRun' });
export type OffboardingRunView = z.infer<typeof offboardingRunView>;

/** GET /api/v1/partner-offboarding/runs: its own component ids, as the run's (`RunSummary` and `RunPage` are the golden path's). */
export const offboardingRunPage = pageSchema(runSummary.meta({ id: 'PartnerOffboardingRunSummary' })).meta({ id: 'PartnerOffboardingRunPage' });

/** The run row: its jsonb `output`, `error` and `retry_history` as the workflow's finish, the executor, a cancel and a retry write them. */
export type OffboardingRunRow = Omit<RunRow, 'output' | 'error'> & { output: OffboardingRunView['output']; error: OffboardingRunView['error']; retry_history: RunRetryView[] | null };

export function toOffboardingRunView(run: OffboardingRunRow, steps: OffboardingCheckpointRow[], stepNames: string[]): OffboardingRunView {
  return {
    ...runViewFields(run, steps, stepNames),
    output: run.output,
    error: run.error,
    ...toRunRetryFields(run),
    links: { self: offboardingRunPath(run.id) },
  };
}
