/**
 * What BullMQ keeps of a job's error (its failedReason in Bull Board, the `job failed` event of its
 * span, which goes to the collector) for the jobs that are not a run's steps — timers, maintenance,
 * webhook deliveries: a database error by its SQLSTATE, never PostgreSQL's message, which quotes
 * values (a run's steps do the same: step-failures.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue } from 'bullmq';
import { randomUUID } from 'node:crypto';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { waitFor } from '../helpers/poll.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { UnrecoverableError } from 'bullmq';

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
