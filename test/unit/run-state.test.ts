/**
 * When a run job may run its first step from what it carries, without reading the run (ADR 0004):
 * only a first delivery of a new run's job, of the workflow version and step the code has, whose
 * first step declares that its only effects are in its transaction. Everything else reads the run.
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineStep, defineWorkflow, type StepDef } from '../../src/platform/durable/workflow.ts';
import { startingRunState } from '../../src/platform/durable/run-state.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';

const step = (name: string, extra: Partial<StepDef> = {}): StepDef =>
  defineStep({ name, input: z.unknown(), output: z.unknown(), run: async () => null, ...extra });
const workflow = (first: StepDef) =>
  defineWorkflow({ name: 'flow', version: 3, tag: 'flow', queue: 'flow', input: z.unknown(), steps: [first, step('b', { prefetch: 'select 1' })] });
const wf = workflow(step('a', { effectsInTransaction: true }));

const createdAt = '2026-12-02T10:00:00.123Z';
const job: StepJobData = {
  run_id: '5f0c7b1e-0000-4000-8000-000000000001',
  tenant_id: '5f0c7b1e-0000-4000-8000-000000000002',
  workflow: 'flow',
  step: 'a',
  sequence_num: 1,
  _correlation_id: 'corr-1',
  first: { workflow_version: 3, idempotency_hash: 'h'.repeat(64), principal: 'user-1', input: { x: 1 }, created_at: createdAt },
};

describe('startingRunState', () => {
  it("a new run's first delivery: the run as created, pending, nothing checkpointed or prefetched", () => {
    const state = startingRunState(wf, job, true)!;
    expect(state.run).toMatchObject({ id: job.run_id, tenant_id: job.tenant_id, workflow: 'flow', workflow_version: 3, status: 'pending', input: { x: 1 }, principal: 'user-1', correlation_id: 'corr-1', sequence_num: 0 });
    expect(state.info).toEqual({ id: job.run_id, tenantId: job.tenant_id, workflow: 'flow', workflowVersion: 3, principal: 'user-1', correlationId: 'corr-1', idempotencyHash: 'h'.repeat(64), createdAt: new Date(createdAt) });
    expect([state.checkpoints.size, Object.keys(state.outputs).length, state.prefetched.size]).toEqual([0, 0, 0]);
  });

  it('reads the run instead: a job delivered again, retried, or carrying nothing; another version, workflow or step; a first step with effects outside its transaction, or a prefetch of its own', () => {
    const cases: [string, WorkflowArgs][] = [
      ['delivered again', [wf, job, false]],
      ['a failed attempt counted', [wf, { ...job, failures: { '1': 1 } }, true]],
      ['reached recorded', [wf, { ...job, reached: 1 }, true]],
      ['carries nothing', [wf, { ...job, first: undefined }, true]],
      ['not from step 1', [wf, { ...job, sequence_num: 2, step: 'b' }, true]],
      ['another workflow version', [wf, { ...job, first: { ...job.first!, workflow_version: 2 } }, true]],
      ['another workflow', [wf, { ...job, workflow: 'other' }, true]],
      ['another step name', [wf, { ...job, step: 'renamed' }, true]],
      ['effects outside the transaction', [workflow(step('a')), job, true]],
      ['a prefetch of its own', [workflow(step('a', { effectsInTransaction: true, prefetch: 'select 1' })), job, true]],
    ];
    for (const [why, args] of cases) expect(startingRunState(...args), why).toBeUndefined();
  });
});

type WorkflowArgs = Parameters<typeof startingRunState>;
