/**
 * A run job that never ran a step — a leftover (a replayed submission's ensureEnqueued, a job retried
 * from Bull Board) of a run that waits for a human — whose every read of the run meets a statement
 * timeout (a lock held past DATABASE_STATEMENT_TIMEOUT): the database was busy, the run is as it was.
 * The job ends as infrastructure once its attempts are spent; it never fails the run "at its step"
 * nor withdraws the run's pending approval request.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { retryOf } from '../../src/platform/durable/workflow.ts';

const LONG = 180_000;

describe("a leftover job whose reads of a waiting run time out", () => {
  // A short statement timeout, so the job's attempts spend their reads quickly (no worker process: the test's own host runs the jobs).
  const suite = stackForTests({ stack: { env: { DATABASE_STATEMENT_TIMEOUT: '2s' } }, users: true, timeoutMs: LONG });
  const { tok } = suite;
  let stack: TestStack;
  beforeAll(() => void ({ stack } = suite));

  it('its last attempt leaves the run waiting with its approval request pending: infrastructure, not the run\'s failure', { timeout: LONG }, async () => {
    const host = startRunHost(stack, stack.container.runtime.workflow(GOLDEN_PATH), `read-timeout-${randomUUID().slice(0, 8)}`);
    const owner = new pg.Client({ connectionString: stack.db.ownerUrl });
    let locked = false;
    try {
      const sub = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } }); // class B: waits for a human at step 3
      expect(sub.status, sub.text).toBe(202);
      const id = sub.json.run_id as string;
      await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! })).json?.status === 'waiting', { timeoutMs: 60_000, what: 'the run to wait for its approval' });
      const run = (await stack.db.admin(`select * from durable_runs where id = $1`, [id])).rows[0];
      const before = (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
      expect(before.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'completed'], [3, 'waiting']]);

      // Every read of the run waits behind this lock until the statement timeout cancels it (57014).
      await owner.connect();
      await owner.query('begin');
      await owner.query('lock table durable_runs in access exclusive mode');
      locked = true;
      // A replayed submission's ensureEnqueued once the run's first job is gone from Redis (removed as
      // finished jobs are, QUEUE_KEEP_COMPLETED): the job of the run's stretch from step 1, which reads the run first.
      const wf = stack.container.runtime.workflow(GOLDEN_PATH);
      const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
      const jobId = stepJobId(wf.tag, run.idempotency_hash, 1, wf.steps[0]!.name, 0);
      await waitFor(async () => (await queue.getJobState(jobId)) === 'completed', { what: "the run's first job to complete" });
      await queue.remove(jobId);
      await stack.container.runtime.ensureEnqueued(run);
      expect(await queue.getJobState(jobId)).not.toBe('unknown');
      // Until the job has spent its attempts — or, before the fix, until its last attempt went on to record
      // the run's failure (that statement waits behind the lock too: the lock goes, so it commits).
      await waitFor(
        async () => {
          if ((await queue.getJobState(jobId)) === 'failed') return true;
          const marking = await stack.db.admin(
            `select 1 from pg_stat_activity where datname = $1 and wait_event_type = 'Lock' and query like 'select retry_count from durable_runs%for key share%'`,
            [stack.db.name],
          );
          return marking.rows.length > 0;
        },
        { timeoutMs: 150_000, intervalMs: 20, what: 'the leftover job to spend its attempts' },
      );
      await owner.query('commit');
      locked = false;
      // The job fails once whatever its last attempt does has committed.
      await waitFor(async () => (await queue.getJobState(jobId)) === 'failed', { timeoutMs: 60_000, what: 'the leftover job to fail' });

      const after = await stack.db.admin(`select status, error, completed_at from durable_runs where id = $1`, [id]);
      expect(after.rows[0]).toMatchObject({ status: 'waiting', error: null, completed_at: null });
      expect((await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows).toEqual(before);
      expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'pending' }]);
      const job = (await queue.getJob(jobId))!;
      // It did meet the timeout on each of its attempts (the test is not vacuous).
      expect(job.attemptsMade).toBe(retryOf(wf.steps[0]!).attempts);
      expect(job.failedReason).toContain('57014');
    } finally {
      if (locked) await owner.query('rollback').catch(() => {});
      await owner.end().catch(() => {});
      await host.stop();
    }
  });
});
