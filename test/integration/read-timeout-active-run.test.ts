/**
 * An active run (pending or running) whose every read by its run job meets a statement timeout: each
 * job spends its attempts and ends as infrastructure (the database busy, not the run at fault), and
 * the sweeper finds the run without a job and adds a new one, whose attempts start afresh. Without a
 * count kept with the run that went on for ever: the run never failed and its step's attempts meant
 * nothing. The run counts its jobs that ended so (`read_timeout_jobs`): one ending leaves it as it
 * is, and once as many have ended as its step has attempts it fails `infrastructure_exhausted`,
 * naming the SQLSTATE, and can be retried (ADR 0009), which clears the count.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, runUsers, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { stackSweeper } from '../helpers/recovery.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

const LONG = 180_000;
/** Each step's attempts in the test's worker: also how many jobs may end on a read timeout before the run fails. */
const ATTEMPTS = 2;

describe('an active run whose every read times out', () => {
  let stack: TestStack;
  const tenant = newTenant();
  const tok: Record<string, string> = {};

  beforeAll(async () => {
    // A short statement timeout, so the jobs' reads are cancelled quickly (no worker process: the test's own host runs the jobs).
    stack = await startStack({ env: { DATABASE_STATEMENT_TIMEOUT: '2s' } });
    Object.assign(tok, await runUsers(stack, tenant));
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  it('fails infrastructure_exhausted once its step\'s attempts of jobs have ended so, not before; a retry clears the count', { timeout: LONG }, async () => {
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const wf: WorkflowDef = { ...base, steps: base.steps.map((s) => ({ ...s, retry: { attempts: ATTEMPTS, backoffMs: 20, jitter: 0 } })) };
    const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    const sweeper = stackSweeper(stack, `read-timeout-sweep-${randomUUID().slice(0, 8)}`);
    const sub = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(sub.status, sub.text).toBe(202);
    const id = sub.json.run_id as string;
    const run = (await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [id])).rows[0] as { idempotency_hash: string };
    const jobId = stepJobId(wf.tag, run.idempotency_hash, 1, wf.steps[0]!.name, 0);
    const runRow = async () => (await stack.db.admin(`select status, error from durable_runs where id = $1`, [id])).rows[0] as { status: string; error: any };
    // Every read of the run waits behind this lock (its approval step's policy prefetch reads the table)
    // until the statement timeout cancels it (57014); the run's own row stays writable.
    const lock = await holdTable(stack.db.ownerUrl, 'approval_policies', 'access exclusive');
    const host = startRunHost(stack, wf, `read-timeout-active-${randomUUID().slice(0, 8)}`);
    try {
      const failedJob = async (notAddedAt?: number) =>
        waitFor(
          async () => {
            const job = await queue.getJob(jobId);
            return job && job.timestamp !== notAddedAt && (await job.getState()) === 'failed' ? job : undefined;
          },
          { timeoutMs: 90_000, intervalMs: 50, what: 'the run job to spend its attempts' },
        );
      // The first job spends its attempts on the timeout and ends: the run has attempts left, it stays as it is.
      const first = await failedJob();
      expect(first.attemptsMade).toBe(ATTEMPTS);
      expect(first.failedReason).toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null });
      expect((await stack.db.admin(`select read_timeout_jobs from durable_runs where id = $1`, [id])).rows[0]).toEqual({ read_timeout_jobs: 1 });

      // The sweeper finds it without a job and adds one; it too spends its attempts: the budget is spent.
      expect((await sweeper.sweep()).reenqueued).toBe(1);
      const second = await failedJob(first.timestamp);
      expect(second.failedReason).toContain('57014');
      const failed = await runRow();
      expect(failed.status).toBe('failed');
      expect(failed.error).toMatchObject({ code: 'infrastructure_exhausted', sqlstate: '57014', read_timeout_jobs: ATTEMPTS, sequence_num: 1 });
      expect(failed.error.message).toContain('57014');
      // Nothing for the sweeper any more.
      expect((await sweeper.sweep()).reenqueued).toBe(0);
      expect((await stack.db.admin(`select read_timeout_jobs from durable_runs where id = $1`, [id])).rows[0]).toEqual({ read_timeout_jobs: ATTEMPTS });

      // The database well again, the run is retried as any failed run (ADR 0009): the count starts afresh.
      await lock.release();
      const retried = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
      expect(retried.status, retried.text).toBe(200);
      expect(retried.json.retries.at(-1).error).toMatchObject({ code: 'infrastructure_exhausted' });
      expect((await stack.db.admin(`select read_timeout_jobs from durable_runs where id = $1`, [id])).rows[0]).toEqual({ read_timeout_jobs: 0 });
      await waitFor(async () => (await runRow()).status === 'waiting', { timeoutMs: 60_000, what: 'the retried run to reach its approval' });
    } finally {
      await lock.close();
      await host.stop();
    }
  });
});
