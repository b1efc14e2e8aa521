/**
 * Steps that throw what is not an Error, or return what JSON cannot hold (docs/runtime.md, "Failures"):
 * each fails its run clearly, with its error recorded, and leaves no step behind — never a run left
 * running. Executed in this process by the real executor against the real PostgreSQL (RLS in force).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { Job } from 'bullmq';
import { pino } from 'pino';
import { z } from 'zod';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { readRun } from '../helpers/recovery.ts';
import { withDirectQueue } from '../helpers/direct-queue.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());

const ODD = 'odd-values';

/** A one-step workflow whose step does `body`, on its one attempt by default (so its first failure is for good). */
function oddWorkflow(body: () => unknown, attempts: number) {
  const step = defineStep({ name: 'odd', input: z.any(), output: z.any(), retry: { attempts }, run: async () => body() as never });
  return defineWorkflow({ name: ODD, version: 1, tag: 'odd', queue: 'odd-direct', input: z.any(), steps: [step] });
}

async function runOnce(body: () => unknown, attempts = 1) {
  const tenant = newTenant();
  const logger = pino({ level: 'silent' });
  const runtime = new DurableRuntime({ workflows: [oddWorkflow(body, attempts)], queues: new Map(), logger });
  const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
    runtime.start_run(tx, ODD, { tenantId: tenant, principal: 'odd-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() }),
  );
  // A queue no worker listens on: this execution is the only one.
  return withDirectQueue(stack, 'odd-direct', async (queue) => {
    const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: ODD, workflow_version: 1, step: 'odd', sequence_num: 1, _correlation_id: run.correlation_id };
    const job = await Job.create(queue, 'odd', data, { jobId: `odd-${run.id}`, attempts });
    const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId: 'odd-worker', leaseMs: 5000 });
    const outcome = await executor.process(job).then(() => 'returned', (e: unknown) => (e as Error).name);
    return { outcome, after: await readRun(stack, tenant, run.id) };
  });
}

describe('a step that throws a non-Error, or returns what JSON cannot hold', () => {
  it.each([
    ['undefined', () => Promise.reject(undefined), 'non-error thrown'],
    ['null', () => Promise.reject(null), 'non-error thrown: null'],
    ['a string', () => Promise.reject('partner API said no'), 'partner API said no'],
    ['a plain object', () => Promise.reject({ why: 'nope' }), 'non-error thrown: {"why":"nope"}'],
    ['a BigInt in its output', () => ({ n: 10n }), 'BigInt'],
    ['a circular output', () => { const o: Record<string, unknown> = {}; o.self = o; return o; }, 'circular'],
  ])('%s: the run fails for good with the error recorded, and nothing of the step is stored', async (_what, body, message) => {
    const { outcome, after } = await runOnce(body);
    expect(outcome).toBe('UnrecoverableError');
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ step: 'odd', sequence_num: 1 });
    expect(String(after.error.message)).toContain(message);
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'failed']]);
  });

  it.each([
    ['a BigInt', () => ({ n: 10n }), 'BigInt'],
    ['a circular reference', () => { const o: Record<string, unknown> = {}; o.self = o; return o; }, 'circular'],
  ])('an output with %s fails the run at once, whatever attempts its step has left: a retry would return it again', async (_what, body, message) => {
    const { outcome, after } = await runOnce(body, 3);
    expect(outcome).toBe('UnrecoverableError');
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ step: 'odd', sequence_num: 1, code: 'step_output_not_json' });
    expect(String(after.error.message)).toContain(message);
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'failed', 1]]);
  });
});
