import { z } from 'zod';
import type { RunRow } from '../../platform/durable/runtime.ts';
import { runFailure, runViewFields, runViewShape, type CheckpointRow } from '../../platform/durable/run-views.ts';
import { archivedSchema, frozenSchema, settlementSchema } from './partner-offboarding.schemas.ts';

export const OFFBOARDING_BASE = '/api/v1/partner-offboarding';
export const offboardingRunPath = (id: string) => `${OFFBOARDING_BASE}/runs/${id}`;

/** Each step's output, as its schema in the workflow validated it when it was checkpointed. */
const stepOutput = z.union([frozenSchema, settlementSchema, archivedSchema]);
export type OffboardingCheckpointRow = CheckpointRow<z.infer<typeof stepOutput>>;
export type OffboardingStepOutput = z.infer<typeof stepOutput>;

/** GET /api/v1/partner-offboarding/runs/:id. Its own component id: `Run` is the golden path's. */
export const offboardingRunView = z
  .strictObject({
    ...runViewShape(stepOutput),
    output: archivedSchema.nullable().describe("The archive step's output once the run is completed"),
    error: runFailure.nullable().describe('Why a failed run failed (its step)'),
    links: z.strictObject({ self: z.string() }),
  })
  .meta({ id: 'PartnerOffboardingRun' });
export type OffboardingRunView = z.infer<typeof offboardingRunView>;

/** The run row: its jsonb `output` and `error` as the workflow's finish and the executor write them. */
export type OffboardingRunRow = Omit<RunRow, 'output' | 'error'> & { output: OffboardingRunView['output']; error: OffboardingRunView['error'] };

export function toOffboardingRunView(run: OffboardingRunRow, steps: OffboardingCheckpointRow[], stepNames: string[]): OffboardingRunView {
  return {
    ...runViewFields(run, steps, stepNames),
    output: run.output,
    error: run.error,
    links: { self: offboardingRunPath(run.id) },
  };
}
