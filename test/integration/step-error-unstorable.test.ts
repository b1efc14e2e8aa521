/**
 * A step error whose text PostgreSQL cannot store as jsonb — a NUL, an unpaired UTF-16 surrogate, one
 * made by cutting the message at 2000 code units inside a character outside the BMP — still fails its
 * run for good: the recorded error is made storable (NUL removed, lone surrogates replaced, cut on a
 * character's boundary). Left as it was, recording the failure rolled back, the job ended as if the run
 * had failed, and the run stayed active for the sweeper to run its step (and its calls out) again every
 * sweep. A failure that cannot be recorded for another reason (not the database unreachable) is recorded
 * with a fixed error instead; one that cannot be recorded at all is never reported as failed.
 * Executed in this process by the real executor against the real PostgreSQL (RLS in force) and Redis.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { Job, type Queue } from 'bullmq';
import { pino } from 'pino';
import { z } from 'zod';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { Sweeper } from '../../src/platform/durable/sweeper.ts';
import { defineStep, defineWorkflow, type WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { newTenant, type TestStack } from '../helpers/stack.ts';
import { readRun, sweeperStackForTests } from '../helpers/recovery.ts';
import { processAttempts, withDirectQueue } from '../helpers/direct-queue.ts';

/** `lockKeys`: the lock keys of the sweepers this file's tests built, outside the stack's prefix, whose keys are deleted after each test. */
const suite = sweeperStackForTests();
const { lockKeys } = suite;
let stack: TestStack;
beforeAll(() => void ({ stack } = suite));

const ATTEMPTS = 2;

/** A lone surrogate or a NUL: what PostgreSQL's jsonb refuses. */
const unstorable = (s: string) => /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);

/**
 * Runs a one-step workflow (its own name, so the sweep below looks at its run only) whose step throws
 * `error` every attempt, as BullMQ's retries would, then ends the job and sweeps once.
 */
async function failing(error: () => Error, onFailed?: WorkflowDef['onFailed']) {
  const tenant = newTenant();
  const logger = pino({ level: 'silent' });
  const name = `unstorable-${randomUUID().slice(0, 8)}`;
  const step = defineStep({ name: 'call-partner', input: z.any(), output: z.any(), retry: { attempts: ATTEMPTS, backoffMs: 1 }, run: async () => Promise.reject(error()) });
  const wf = defineWorkflow({ name, version: 1, tag: 'unstorable', queue: 'unstorable', input: z.any(), steps: [step], ...(onFailed ? { onFailed } : {}) });
  const queues = new Map<string, Queue>();
  const runtime = new DurableRuntime({ workflows: [wf], queues, logger });
  const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
    runtime.start_run(tx, name, { tenantId: tenant, principal: 'unstorable-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() }),
  );
  return withDirectQueue(stack, 'unstorable', async (queue) => {
    queues.set('unstorable', queue);
    const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: name, workflow_version: 1, step: 'call-partner', sequence_num: 1, _correlation_id: run.correlation_id };
    const job = await Job.create(queue, 'unstorable', data, { jobId: `unstorable-${run.id}`, attempts: ATTEMPTS });
    const outcomes: string[] = [];
    const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId: 'unstorable-worker', leaseMs: 5000, onStepFailed: (i) => outcomes.push(i.outcome) });
    await processAttempts(executor, job, ATTEMPTS, outcomes);
    // The job has ended (BullMQ holds it failed for good): gone, as the sweeper would find it.
    await job.remove();
    const lockKey = `unstorable-${randomUUID()}`;
    lockKeys.push(lockKey);
    const sweeper = new Sweeper({ orm: stack.container.orm, runtime, redis: stack.container.redis, logger, lockKey, intervalMs: 60_000, minAgeMs: 0 });
    const sweep = await sweeper.sweep();
    return { outcomes, reenqueued: sweep.reenqueued, after: await readRun(stack, tenant, run.id) };
  });
}

describe('a step error whose text PostgreSQL cannot store as it is', () => {
  const named = (name: string, message: string) => Object.assign(new Error(message), { name });
  it.each([
    ['a NUL in its message', () => new Error('partner said: a\u0000b'), 'Error', 'partner said: ab'],
    ['a character outside the BMP cut in two at 2000', () => new Error(`${'x'.repeat(1999)}\u{1F600}tail`), 'Error', 'x'.repeat(1999)],
    ['a lone surrogate in its message', () => new Error('bad \ud800 half'), 'Error', 'bad \ufffd half'],
    ['a NUL in its name', () => named('Partner\u0000Error', 'partner refused'), 'PartnerError', 'partner refused'],
    ['a plain message', () => new Error('plain failure'), 'Error', 'plain failure'],
  ])('%s: the run fails for good, the error recorded storable, and no sweep runs it again', async (_what, error, code, message) => {
    const { outcomes, reenqueued, after } = await failing(error);
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ code, message, step: 'call-partner', sequence_num: 1 });
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'failed', ATTEMPTS]]);
    expect(after.checkpoints[0]?.error).toMatchObject({ code, message });
    expect(unstorable(String(after.error.message))).toBe(false);
    expect(reenqueued).toBe(0);
  });

  it('a failure that cannot be recorded as it is (the workflow\'s onFailed throws once): recorded with a fixed error, the run failed', async () => {
    let calls = 0;
    const { outcomes, reenqueued, after } = await failing(
      () => new Error('plain failure'),
      async () => {
        if (calls++ === 0) throw new Error('onFailed broke');
        return undefined;
      },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ code: 'step_error_unrecordable', step: 'call-partner', sequence_num: 1 });
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.error?.code])).toEqual([[1, 'failed', 'step_error_unrecordable']]);
    expect(reenqueued).toBe(0);
  });

  it('a failure that cannot be recorded at all: never reported as failed; the run stays for the sweeper', async () => {
    const { outcomes, reenqueued, after } = await failing(
      () => new Error('plain failure'),
      async () => {
        throw new Error('onFailed always breaks');
      },
    );
    expect(outcomes).toEqual(['retrying', 'infrastructure']);
    expect(['pending', 'running']).toContain(after.status);
    expect(after.checkpoints.filter((c) => c.status === 'failed')).toEqual([]);
    expect(reenqueued).toBe(1);
  });
});
