/**
 * An active run (pending or running) whose every read by its run job meets a statement timeout: each
 * job spends its attempts and ends as infrastructure (the database busy, not the run at fault), and
 * the sweeper finds the run without a job and adds a new one, whose attempts start afresh. Without a
 * count kept with the run that went on for ever: the run never failed and its step's attempts meant
 * nothing. The run counts its jobs that ended so (`read_timeout_jobs`): one ending leaves it as it
 * is, and once as many have ended as its step has attempts it fails `infrastructure_exhausted`,
 * naming the SQLSTATE, and can be retried (ADR 0009), which clears the count. The count is of the
 * step the jobs were at (`read_timeout_seq`): a run that moved on since starts the next step's afresh,
 * so timeouts at different steps over its life do not add up to a failure. One job's end counts once
 * (`read_timeout_keys`): two executions of it at once (a stalled job re-delivered while its first worker
 * still runs it) or its count sent again used to count it twice, and failed the run a job early.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { runExecutor, startRunHost } from '../helpers/run-host.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { stackSweeper } from '../helpers/recovery.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

const LONG = 180_000;
/** Each step's attempts in the test's worker: also how many jobs may end on a read timeout before the run fails. */
const ATTEMPTS = 2;

describe('an active run whose every read times out', () => {
  // A short statement timeout, so the jobs' reads are cancelled quickly (no worker process: the test's own host runs the jobs).
  const suite = stackForTests({ stack: { env: { DATABASE_STATEMENT_TIMEOUT: '2s' } }, users: true, timeoutMs: LONG });
  const { tenant, tok } = suite;
  let stack: TestStack;
  beforeAll(() => void ({ stack } = suite));

  /**
   * A run submitted with a golden path whose steps have ATTEMPTS each, and the test's host running its
   * jobs while every read of the run waits behind a lock on the table its approval step's policy
   * prefetch reads, until the statement timeout cancels it (57014); the run's own row stays writable.
   * Without `hostName` no host runs the jobs: the test hands them to an executor itself.
   */
  async function unreadableRun(hostName?: string) {
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const wf: WorkflowDef = { ...base, steps: base.steps.map((s) => ({ ...s, retry: { attempts: ATTEMPTS, backoffMs: 20, jitter: 0 } })) };
    const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    const sub = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(sub.status, sub.text).toBe(202);
    const id = sub.json.run_id as string;
    const run = (await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [id])).rows[0] as { idempotency_hash: string };
    const jobAt = (seq: number) => stepJobId(wf.tag, run.idempotency_hash, seq, wf.steps[seq - 1]!.name, 0);
    const lock = await holdTable(stack.db.ownerUrl, 'approval_policies', 'access exclusive');
    const host = hostName ? startRunHost(stack, wf, `${hostName}-${randomUUID().slice(0, 8)}`) : { stop: async () => {} };
    return {
      id,
      wf,
      queue,
      jobAt,
      lock,
      host,
      runRow: async () =>
        (await stack.db.admin(`select status, error, read_timeout_jobs, read_timeout_seq, read_timeout_keys from durable_runs where id = $1`, [id])).rows[0] as {
          status: string;
          error: any;
          read_timeout_jobs: number;
          read_timeout_seq: number | null;
          read_timeout_keys: string[] | null;
        },
      /** The job at step `seq` once it has spent its attempts and failed (another than `before`, a job that had). */
      failedJob: async (seq: number, before?: { finishedOn?: number }) =>
        waitFor(
          async () => {
            // finishedOn set in the read: the job as its last failure left it (a read made while a retried job
            // still ran, its state read just after that failure, gave a job with no failedReason in CI).
            const job = await queue.getJob(jobAt(seq));
            return job && job.finishedOn !== undefined && job.finishedOn !== before?.finishedOn && (await job.getState()) === 'failed' ? job : undefined;
          },
          { timeoutMs: 90_000, intervalMs: 50, what: `the run job at step ${seq} to spend its attempts` },
        ),
      /** Step 1 committed by another execution of it (its read went through before the lock): only its checkpoint, as such a step writes. */
      completeStep1: async () => {
        await stack.db.admin(
          `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
           values (gen_random_uuid(), $1, $2, 1, $3, 'completed', '{}'::jsonb, 1, now(), now(), now())`,
          [tenant, id, wf.steps[0]!.name],
        );
      },
    };
  }

  it('fails infrastructure_exhausted once its step\'s attempts of jobs have ended so, not before; a retry clears the count', { timeout: LONG }, async () => {
    const sweeper = stackSweeper(stack, `read-timeout-sweep-${randomUUID().slice(0, 8)}`);
    const { id, lock, host, runRow, failedJob } = await unreadableRun('read-timeout-active');
    try {
      // The first job spends its attempts on the timeout and ends: the run has attempts left, it stays as it is.
      const first = await failedJob(1);
      expect(first.attemptsMade).toBe(ATTEMPTS);
      expect(first.failedReason).toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 1 });

      // The sweeper finds it without a job and adds one; it too spends its attempts: the budget is spent.
      expect((await sweeper.sweep()).reenqueued).toBe(1);
      const second = await failedJob(1, first);
      expect(second.failedReason).toContain('57014');
      const failed = await runRow();
      expect(failed.status).toBe('failed');
      expect(failed.error).toMatchObject({ code: 'infrastructure_exhausted', sqlstate: '57014', read_timeout_jobs: ATTEMPTS, sequence_num: 1 });
      expect(failed.error.message).toContain('57014');
      // Nothing for the sweeper any more.
      expect((await sweeper.sweep()).reenqueued).toBe(0);
      expect(await runRow()).toMatchObject({ read_timeout_jobs: ATTEMPTS });

      // The database well again, the run is retried as any failed run (ADR 0009): the count starts afresh.
      await lock.release();
      const retried = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
      expect(retried.status, retried.text).toBe(200);
      expect(retried.json.retries.at(-1).error).toMatchObject({ code: 'infrastructure_exhausted' });
      expect(await runRow()).toMatchObject({ read_timeout_jobs: 0, read_timeout_seq: null, read_timeout_keys: null });
      await waitFor(async () => (await runRow()).status === 'waiting', { timeoutMs: 60_000, what: 'the retried run to reach its approval' });
    } finally {
      await lock.close();
      await host.stop();
    }
  });

  it('counts a step\'s jobs only: a run that moved on since a job ended so starts the next step\'s count afresh', { timeout: LONG }, async () => {
    const sweeper = stackSweeper(stack, `read-timeout-sweep-${randomUUID().slice(0, 8)}`);
    const { lock, host, runRow, failedJob, completeStep1 } = await unreadableRun('read-timeout-moved');
    try {
      // Step 1's job ends unable to read the run: counted at step 1.
      expect((await failedJob(1)).failedReason).toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 1 });
      // Step 1 committed meanwhile: the run moved on, and its row did not (a step that leaves the status as it was writes only its checkpoint).
      await completeStep1();
      // The sweeper's job at step 2 ends so too: one of step 2's, not the second of the run's — the run stays as it is.
      expect((await sweeper.sweep()).reenqueued).toBe(1);
      expect((await failedJob(2)).failedReason).toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 2 });
    } finally {
      await host.stop();
      await lock.close();
    }
  });

  it('a job whose count is spent at a step committed meanwhile ends as infrastructure: the run that moved on is not failed', { timeout: LONG }, async () => {
    const { id, lock, host, runRow, failedJob, completeStep1 } = await unreadableRun('read-timeout-leftover');
    try {
      const first = await failedJob(1);
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 1 });
      // Step 1 committed meanwhile, and this job, a leftover now, retried from Bull Board: it cannot read
      // the run either, and its end spends step 1's count — but the run is no longer at step 1: it stays
      // as it is, for the job carrying it (or the sweeper's) to count at the step it is at.
      await completeStep1();
      await first.retry('failed');
      expect((await failedJob(1, first)).failedReason).toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: ATTEMPTS, read_timeout_seq: 1 });
      expect((await stack.db.admin(`select status from durable_checkpoints where run_id = $1 and sequence_num = 1`, [id])).rows).toEqual([{ status: 'completed' }]);
    } finally {
      await host.stop();
      await lock.close();
    }
  });

  it('one job\'s ends at two steps count once at each: the later step is not failed by the earlier one\'s count', { timeout: LONG }, async () => {
    // Two executions of one job (a stalled job re-delivered while its first worker still runs it) can
    // end unable to read the run at different steps: the first at step 1, the other after committing
    // step 1, at step 2. The second is step 2's first such end, not step 1's count carried over: with
    // step 1 at 2 of its 3 attempts, step 2 (2 attempts) must not fail the run.
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const wf: WorkflowDef = { ...base, steps: base.steps.map((s, i) => ({ ...s, retry: { attempts: i === 0 ? 3 : 2, backoffMs: 20, jitter: 0 } })) };
    const sub = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(sub.status, sub.text).toBe(202);
    const id = sub.json.run_id as string;
    // Another job's end counted at step 1 before.
    await stack.db.admin(`update durable_runs set read_timeout_jobs = 1, read_timeout_seq = 1, read_timeout_keys = '{other@1#0}' where id = $1`, [id]);
    const { executor, logger } = runExecutor(stack, wf, `read-timeout-steps-${randomUUID().slice(0, 8)}`);
    const count = (executor as unknown as {
      countReadTimeout(job: unknown, wf: WorkflowDef, seq: number, err: Error, log: typeof logger): Promise<Error | undefined>;
    }).countReadTimeout.bind(executor);
    const job = { id: `job-${randomUUID()}`, timestamp: 1_700_000_000_000, attemptsMade: 0, data: { tenant_id: tenant, run_id: id, retry: 0 } };
    const timeout = Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' });
    const row = async () => (await stack.db.admin(`select status, read_timeout_jobs, read_timeout_seq from durable_runs where id = $1`, [id])).rows[0];
    expect(await count(job, wf, 1, timeout, logger)).toBeUndefined();
    expect(await row()).toMatchObject({ status: 'pending', read_timeout_jobs: 2, read_timeout_seq: 1 });
    // The same job's other execution, at step 2: counted there, afresh.
    expect(await count(job, wf, 2, timeout, logger)).toBeUndefined();
    expect(await row()).toMatchObject({ status: 'pending', read_timeout_jobs: 1, read_timeout_seq: 2 });
    // Sent again: still once.
    expect(await count(job, wf, 2, timeout, logger)).toBeUndefined();
    expect(await row()).toMatchObject({ status: 'pending', read_timeout_jobs: 1, read_timeout_seq: 2 });
  });

  it('counts one job\'s end once: two executions of it at once, or its count sent again, count one; another job counts', { timeout: LONG }, async () => {
    const sweeper = stackSweeper(stack, `read-timeout-sweep-${randomUUID().slice(0, 8)}`);
    const { lock, host, runRow, wf, queue, jobAt } = await unreadableRun();
    const { executor } = runExecutor(stack, wf, `read-timeout-twice-${randomUUID().slice(0, 8)}`);
    /** The run's job at step 1 at its last attempt (its earlier ones spent on the timeout), as each execution of it finds it. */
    const atLastAttempt = async () => {
      const job = await waitFor(() => queue.getJob(jobAt(1)), { timeoutMs: 30_000, what: 'the run job at step 1' });
      await job.updateData({ ...job.data, failures: { '1': ATTEMPTS - 1 } });
      return job;
    };
    try {
      await atLastAttempt();
      // Two executions of that one job at once (a stalled job re-delivered while its first worker still
      // runs it), each with its own copy of the job: both end unable to read the run, and count it once.
      const [a, b] = await Promise.all([queue.getJob(jobAt(1)), queue.getJob(jobAt(1))]);
      const ends = await Promise.allSettled([executor.process(a!), executor.process(b!)]);
      for (const end of ends) expect(end.status === 'rejected' ? String(end.reason?.message) : 'completed').toContain('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 1 });
      // The same execution's end counted again (its count sent again after its answer was lost, say): still one.
      await expect(executor.process(a!)).rejects.toThrow('57014');
      expect(await runRow()).toMatchObject({ status: 'pending', error: null, read_timeout_jobs: 1, read_timeout_seq: 1 });
      // Another job — the sweeper's, under the same id once the first is gone — counts, and spends the step's budget.
      // (The sweep re-enqueues the file's earlier runs left pending too: no host runs them.)
      await queue.remove(jobAt(1));
      expect((await sweeper.sweep()).reenqueued).toBeGreaterThanOrEqual(1);
      await expect(executor.process(await atLastAttempt())).rejects.toThrow('57014');
      const failed = await runRow();
      expect(failed.status).toBe('failed');
      expect(failed.error).toMatchObject({ code: 'infrastructure_exhausted', sqlstate: '57014', read_timeout_jobs: ATTEMPTS, sequence_num: 1 });
      // The two jobs' ends, newest first: the same id, another job.
      expect(failed.read_timeout_keys).toHaveLength(2);
      expect(failed.read_timeout_keys![1]).toMatch(new RegExp(`^${jobAt(1)}@\\d+#0/1$`));
      expect(failed.read_timeout_keys![0]).not.toBe(failed.read_timeout_keys![1]);
    } finally {
      await host.stop();
      await lock.close();
    }
  });
});
