/**
 * A step error whose text PostgreSQL cannot store as jsonb — a NUL, an unpaired UTF-16 surrogate, one
 * made by cutting the message at 2000 code units inside a character outside the BMP — still fails its
 * run for good: the recorded error is made storable (NUL removed, lone surrogates replaced, cut on a
 * character's boundary). Left as it was, recording the failure rolled back, the job ended as if the run
 * had failed, and the run stayed active for the sweeper to run its step (and its calls out) again every
 * sweep. A failure that cannot be recorded for another reason (not the database unreachable) is recorded
 * with a fixed error instead; one that cannot be recorded at all is never reported as failed.
 * A workflow's `onFailed` that throws — every time, a bug of its own — is rolled back alone (a savepoint):
 * the run still fails, the hook's error recorded beside the step's (`on_failed_error`), instead of both
 * records rolling back and the sweeper running the step again every sweep; one that meets the platform's
 * database unreachable or timing out still leaves the run to the sweeper, nothing of the failure committed.
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
import { capturedLog } from '../helpers/log-capture.ts';

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
 * `error` every attempt, as BullMQ's retries would, then ends the job and sweeps once. With `endpoint`,
 * the tenant has a webhook endpoint subscribed to `run.failed`: the run's deliveries as committed, and
 * the ids the runtime handed its dispatcher after the commit, are returned.
 */
async function failing(error: () => Error, onFailed?: WorkflowDef['onFailed'], opts: { endpoint?: boolean } = {}) {
  const tenant = newTenant();
  if (opts.endpoint)
    await stack.db.admin(
      `insert into webhook_endpoints (id, tenant_id, url, events, secret, enabled, created_by, created_at, updated_at) values (gen_random_uuid(), $1, 'https://hooks.example.com/failed', '{run.failed}', 'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=', true, 'test', now(), now())`,
      [tenant],
    );
  const dispatched: string[] = [];
  const { lines, destination } = capturedLog();
  const logger = pino({ level: 'info' }, destination);
  const name = `unstorable-${randomUUID().slice(0, 8)}`;
  // Every execution of the step: its calls out, made again by each one.
  let calls = 0;
  const step = defineStep({ name: 'call-partner', input: z.any(), output: z.any(), retry: { attempts: ATTEMPTS, backoffMs: 1 }, run: async () => Promise.reject((calls++, error())) });
  const wf = defineWorkflow({ name, version: 1, tag: 'unstorable', queue: 'unstorable', input: z.any(), steps: [step], ...(onFailed ? { onFailed } : {}) });
  const queues = new Map<string, Queue>();
  const runtime = new DurableRuntime({ workflows: [wf], queues, logger, webhooks: { dispatch: async (_tenant, ids) => void dispatched.push(...ids) } });
  const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
    runtime.start_run(tx, name, { tenantId: tenant, principal: 'unstorable-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() }),
  );
  return withDirectQueue(stack, 'unstorable', async (queue) => {
    queues.set('unstorable', queue);
    const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: name, workflow_version: 1, step: 'call-partner', sequence_num: 1, _correlation_id: run.correlation_id };
    const job = await Job.create(queue, 'unstorable', data, { jobId: `unstorable-${run.id}`, attempts: ATTEMPTS });
    const outcomes: string[] = [];
    const hookFailures: string[] = [];
    const executor = new StepExecutor({
      orm: stack.container.orm,
      runtime,
      logger,
      workerId: 'unstorable-worker',
      leaseMs: 5000,
      onStepFailed: (i) => outcomes.push(i.outcome),
      onFailedHookFailed: (i) => hookFailures.push(i.workflow),
    });
    await processAttempts(executor, job, ATTEMPTS, outcomes);
    // The job has ended (BullMQ holds it failed for good): gone, as the sweeper would find it.
    await job.remove();
    const lockKey = `unstorable-${randomUUID()}`;
    lockKeys.push(lockKey);
    const sweeper = new Sweeper({ orm: stack.container.orm, runtime, redis: stack.container.redis, logger, lockKey, intervalMs: 60_000, minAgeMs: 0 });
    const sweep = await sweeper.sweep();
    const deliveries = (await stack.db.admin(`select id, event_type, payload from webhook_deliveries where tenant_id = $1 order by created_at, id`, [tenant])).rows;
    const [ended] = (await stack.db.admin(`select completed_at from durable_runs where id = $1`, [run.id])).rows;
    return { name, runId: run.id, completedAt: ended?.completed_at as Date | null, outcomes, calls, hookFailures, lines, dispatched, deliveries, reenqueued: sweep.reenqueued, after: await readRun(stack, tenant, run.id) };
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

  it("the workflow's onFailed throwing once: the run fails with the step's own error, the hook's recorded beside it; the hook's writes roll back alone", async () => {
    let hooks = 0;
    const { name, outcomes, calls, hookFailures, lines, reenqueued, after } = await failing(
      () => new Error('plain failure'),
      async (em, run) => {
        hooks++;
        // Written, then undone with the hook's savepoint: nothing of a hook that threw commits.
        const [written] = await em.execute<{ id: string }[]>(`update durable_checkpoints set attempt = 99 where run_id = ? returning id`, [run.runId]);
        if (!written) return undefined;
        throw new Error('onFailed broke');
      },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ code: 'Error', message: 'plain failure', step: 'call-partner', sequence_num: 1, on_failed_error: { code: 'Error', message: 'onFailed broke' } });
    // The hook's write (the attempt it set) rolled back with it.
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.error?.code, c.attempt])).toEqual([[1, 'failed', 'Error', ATTEMPTS]]);
    expect(hooks).toBe(1);
    expect(calls).toBe(ATTEMPTS);
    expect(hookFailures).toEqual([name]);
    expect(lines.filter((l) => l.level === 50 && l.on_failed_error?.message === 'onFailed broke')).toHaveLength(1);
    expect(reenqueued).toBe(0);
  });

  it("the workflow's onFailed always throwing (a bug of its own): the run still fails, its step ran no more than its attempts, and no sweep runs it again", async () => {
    const { outcomes, calls, hookFailures, reenqueued, after } = await failing(
      () => new Error('plain failure'),
      async () => {
        throw new Error('onFailed always breaks \u0000 with a NUL');
      },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ code: 'Error', message: 'plain failure', on_failed_error: { code: 'Error', message: 'onFailed always breaks  with a NUL' } });
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'failed', ATTEMPTS]]);
    expect(calls).toBe(ATTEMPTS);
    expect(hookFailures).toHaveLength(1);
    expect(reenqueued).toBe(0);
  });

  it("the workflow's onFailed always throwing, its tenant subscribed to run.failed: exactly one delivery, the committed end's, dispatched once", async () => {
    const { runId, completedAt, outcomes, after, deliveries, dispatched } = await failing(
      () => new Error('plain failure'),
      async () => {
        throw new Error('onFailed always breaks');
      },
      { endpoint: true },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error.on_failed_error).toEqual({ code: 'Error', message: 'onFailed always breaks' });
    // The end the savepoint rolled back inserted a delivery too: gone with it, and never dispatched.
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]).toMatchObject({ event_type: 'run.failed', payload: { type: 'run.failed', data: { run_id: runId, status: 'failed' } } });
    // The payload is the committed end's: its ended_at is the run's completed_at (the envelope carries no error: GET the run).
    expect(new Date(deliveries[0].payload.data.ended_at).getTime()).toBe(completedAt!.getTime());
    expect(dispatched).toEqual([deliveries[0].id]);
  });

  it("the workflow's onFailed failing on the platform's database (a SQLSTATE): recorded by its SQLSTATE only, never PostgreSQL's message", async () => {
    const { outcomes, after } = await failing(
      () => new Error('plain failure'),
      async (em) => {
        await em.execute(`select 1 / 0`);
        return undefined;
      },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error.on_failed_error).toEqual({ code: 'database_error', message: expect.stringContaining('SQLSTATE 22012') });
  });

  it("the workflow's onFailed throwing an error that only quotes a connection loss (its own call out): the run still fails", async () => {
    const { outcomes, after, reenqueued } = await failing(
      () => new Error('plain failure'),
      async () => {
        throw new Error('partner API 502: upstream said "Connection terminated unexpectedly"');
      },
    );
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error.on_failed_error).toMatchObject({ message: expect.stringContaining('Connection terminated unexpectedly') });
    expect(reenqueued).toBe(0);
  });

  it.each([
    ['a statement timeout (the database too busy)', (em: Parameters<NonNullable<WorkflowDef['onFailed']>>[0]) => em.execute(`select set_config('statement_timeout', '1', true)`).then(() => em.execute('select pg_sleep(0.5)'))],
    ["its connection lost (the platform's database gone)", (em: Parameters<NonNullable<WorkflowDef['onFailed']>>[0]) => em.execute('select pg_terminate_backend(pg_backend_pid())')],
  ])("the workflow's onFailed meeting %s: nothing of the failure commits; the run stays for the sweeper", async (_what, query) => {
    const { outcomes, hookFailures, reenqueued, after } = await failing(
      () => new Error('plain failure'),
      async (em) => {
        await query(em);
        return undefined;
      },
    );
    expect(outcomes).toEqual(['retrying', 'infrastructure']);
    expect(['pending', 'running']).toContain(after.status);
    expect(after.checkpoints.filter((c) => c.status === 'failed')).toEqual([]);
    expect(hookFailures).toEqual([]);
    expect(reenqueued).toBe(1);
  });
});
