/**
 * What BullMQ keeps of a job's error (its failedReason in Bull Board, the `job failed` event of its
 * span, which goes to the collector) for the jobs that are not a run's steps — timers, maintenance,
 * webhook deliveries: a database error by its SQLSTATE, never PostgreSQL's message, which quotes
 * values (a run's steps do the same: step-failures.test.ts); and a run job's database error raised
 * outside its steps, before them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, runUsers, startStack, type TestStack } from '../helpers/stack.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { waitFor } from '../helpers/poll.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { UnrecoverableError } from 'bullmq';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
}, 120_000);
afterAll(() => stack?.stop());

describe("a timer, maintenance or webhook job's error as BullMQ keeps it", () => {
  it("is a database error's SQLSTATE, not PostgreSQL's message; the job's own errors stay as they are", async () => {
    const secret = `secret-${randomUUID()}`;
    const handlers = {
      'probe-db-error': async () => {
        await stack.container.orm.em.getConnection().execute(`select '${secret}'::int`);
      },
      'probe-own-error': async () => {
        throw new UnrecoverableError(`its own words ${secret}`);
      },
    };
    const host = startRunHost(stack, stack.container.runtime.workflow(GOLDEN_PATH), 'job-errors', handlers);
    const queue = new Queue(TIMER_QUEUE, { connection: stack.redis, prefix: stack.prefix });
    try {
      const db = await queue.add('probe-db-error', {}, { attempts: 1 });
      const own = await queue.add('probe-own-error', {}, { attempts: 1 });
      // The state first, then the job: a job read before it failed would have no failedReason yet.
      const failed = async (id: string) => ((await queue.getJobState(id)) === 'failed' ? queue.getJob(id) : undefined);
      const dbJob = await waitFor(() => failed(db.id!), { timeoutMs: 30_000, what: 'the database-error job to fail' });
      expect(dbJob.failedReason).toContain('SQLSTATE 22P02');
      expect(JSON.stringify([dbJob.failedReason, dbJob.stacktrace])).not.toContain(secret);
      const ownJob = await waitFor(() => failed(own.id!), { timeoutMs: 30_000, what: 'the own-error job to fail' });
      expect(ownJob.failedReason).toBe(`its own words ${secret}`);
    } finally {
      await queue.close();
      await host.stop();
    }
  });
});

describe('a run job whose data the platform did not write', () => {
  // Bull Board no longer adds or edits jobs, but a job's data is still what a worker trusts in place of
  // the run (Redis reached another way, a bug): one not shaped as the runtime writes it fails for good
  // at once, before any statement, as a security event, instead of retrying its first step on it.
  it('fails for good on its first attempt, with a reason that says why', async () => {
    const wf = stack.container.runtime.workflow(GOLDEN_PATH);
    const host = startRunHost(stack, wf, 'job-errors-malformed', {});
    const queue = new Queue(wf.queue, { connection: stack.redis, prefix: stack.prefix });
    try {
      const forged = [
        { run_id: "x' or true --", tenant_id: randomUUID(), workflow: wf.name, workflow_version: wf.version, step: wf.steps[0]!.name, sequence_num: 1, _correlation_id: 'c' },
        { run_id: randomUUID(), tenant_id: 'every-tenant', workflow: wf.name, workflow_version: wf.version, step: wf.steps[0]!.name, sequence_num: 1, _correlation_id: 'c' },
        { run_id: randomUUID(), tenant_id: randomUUID(), workflow: wf.name, workflow_version: wf.version, step: wf.steps[0]!.name, sequence_num: 0, _correlation_id: 'c' },
      ];
      for (const data of forged) {
        const job = await queue.add('run', data, { attempts: 5, backoff: { type: 'fixed', delay: 50 } });
        const failed = await waitFor(async () => ((await queue.getJobState(job.id!)) === 'failed' ? queue.getJob(job.id!) : undefined), { timeoutMs: 30_000, what: 'the forged job to fail' });
        expect(failed.failedReason, JSON.stringify(data)).toMatch(/^run job data malformed/);
        expect(failed.attemptsMade).toBe(1);
      }
    } finally {
      await queue.close();
      await host.stop();
    }
  });
});

describe("a run job's database error raised before its step loop, as BullMQ keeps it", () => {
  // The executor names a step's database errors by their SQLSTATE itself; this one comes before any
  // step: the read of the run's workflow version that a job added before jobs carried it (no
  // `workflow_version`) makes first. The read waits for a lock an operator session holds on the runs
  // table, past DATABASE_STATEMENT_TIMEOUT: a real PostgreSQL error (57014), whose message BullMQ
  // must not keep. Once the lock is gone the job's retry carries the run to its end: nothing is lost.
  let slow: TestStack;
  beforeAll(async () => {
    slow = await startStack({ env: { DATABASE_STATEMENT_TIMEOUT: '1s' } });
  }, 120_000);
  afterAll(() => slow?.stop());

  it("is the SQLSTATE, not PostgreSQL's message, and the run still completes", { timeout: 120_000 }, async () => {
    const wf = slow.container.runtime.workflow(GOLDEN_PATH);
    const queue = new Queue<StepJobData>(wf.queue, { connection: slow.redis, prefix: slow.prefix });
    const tok = await runUsers(slow, newTenant());
    const submitted = await api(slow, 'POST', '/api/v1/golden-path/run', { token: tok.submitter, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(submitted.status, submitted.text).toBe(202);
    const runId = submitted.json.run_id as string;
    // No worker serves the queue yet: the run's job waits, and becomes one of an older release.
    const job = await waitFor(async () => (await queue.getJobs(['wait', 'prioritized'])).find((j) => j.data.run_id === runId), { timeoutMs: 30_000, what: "the run's job" });
    const { workflow_version: _version, ...older } = job.data;
    await job.updateData(older as StepJobData);
    const lock = await holdTable(slow.db.adminUrl, 'durable_runs', 'access exclusive');
    let host: ReturnType<typeof startRunHost> | undefined;
    try {
      host = startRunHost(slow, wf, 'job-errors-run-db');
      const failed = await waitFor(async () => {
        const j = await queue.getJob(job.id!);
        return j && j.attemptsMade >= 1 && j.failedReason ? j : undefined;
      }, { timeoutMs: 30_000, what: "the run job's first attempt to fail" });
      expect(failed.failedReason).toContain('database error (SQLSTATE 57014)');
      expect(JSON.stringify([failed.failedReason, failed.stacktrace])).not.toContain('canceling statement');
      expect(JSON.stringify(failed.stacktrace)).not.toContain('durable_runs');
      await lock.release();
      const done = await waitFor(async () => ((await queue.getJobState(job.id!)) === 'completed' ? true : undefined), { timeoutMs: 60_000, what: "the run's job to complete once the lock is gone" });
      expect(done).toBe(true);
      expect((await slow.db.admin('select status from durable_runs where id = $1', [runId])).rows[0].status).toBe('completed');
    } finally {
      await lock.close();
      await host?.stop();
      await queue.close();
    }
  });
});
