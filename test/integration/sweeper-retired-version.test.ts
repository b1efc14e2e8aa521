import { expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { api, CLASS_A_SUBMISSION, newTenant } from '../helpers/stack.ts';
import { failingOnce, sweeperStackForTests } from '../helpers/recovery.ts';
import { waitFor } from '../helpers/poll.ts';
import { laterVersion } from '../helpers/versioned-workflows.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { Sweeper, type SweeperOptions } from '../../src/platform/durable/sweeper.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';

/**
 * An active run of a workflow version retired for good (WORKFLOW_VERSIONS_RETIRED) whose run job Redis
 * lost: no worker will ever register the version, and only a job made its run fail (the executor's
 * failRetired), so the run stayed `pending` for ever, counted against its tenant. The sweeper fails it
 * as that worker would (`workflow_version_retired`, under the run's tenant). A version this process
 * merely does not register is still left alone: another release's worker may run it (ADR 0008).
 * No worker here: the sweeps are the only thing that touches the run.
 */
const suite = sweeperStackForTests({ env: { SWEEPER_INTERVAL: '1h', SWEEPER_MIN_AGE: '1h' } });
const lockKeys = suite.lockKeys;

function sweeperOf(retired: string[], opts: Partial<SweeperOptions> = {}) {
  const v1 = suite.stack.container.runtime.workflow(GOLDEN_PATH);
  const logger = opts.logger ?? pino({ level: 'silent' });
  // The next release: golden-path v2 registered in place of v1.
  const runtime = new DurableRuntime({ workflows: [laterVersion(v1, 2)], queues: suite.stack.container.runtime.queues, logger, retired });
  const lockKey = `sweep-retired-${randomUUID()}`;
  lockKeys.push(lockKey);
  return new Sweeper({ orm: suite.stack.container.orm, runtime, redis: suite.stack.container.redis, logger, lockKey, intervalMs: 60_000, minAgeMs: 0, ...opts });
}

/** A class A golden-path run, started on v1 by the stack's API; its run job queued (no worker here). */
async function submitRun(): Promise<string> {
  const token = await suite.stack.token({ tenantId: newTenant(), sub: 'submitter-1' });
  const res = await api(suite.stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

/** `n` runs as submitRun starts them, once their run jobs are queued, and a look at those jobs (found by the runs' idempotency hashes, as the sweep finds them). */
async function queuedRuns(n: number) {
  const runs: string[] = [];
  for (let i = 0; i < n; i++) runs.push(await submitRun());
  const queue = suite.stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
  const hashes = (await suite.stack.db.admin(`select idempotency_hash from durable_runs where id = any($1::uuid[])`, [runs])).rows.map((r) => (r.idempotency_hash as string).slice(0, 40));
  const jobs = async () => (await queue.getJobs(['wait', 'delayed', 'active', 'prioritized'])).filter((j) => hashes.some((h) => j.id?.includes(h)));
  await waitFor(async () => (await jobs()).length >= n, { timeoutMs: 30_000, what: 'the run jobs' });
  return { runs, queue, jobs };
}

it('an active run of a retired version whose job Redis lost is failed by a sweep; one of a version merely not registered is left alone', { timeout: 120_000 }, async () => {
  const runId = await submitRun();
  const queue = suite.stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
  await waitFor(async () => ((await queue.getJobCounts('wait')).wait ?? 0) > 0, { timeoutMs: 30_000, what: 'the run job' });
  // Redis loses the run's job.
  await queue.obliterate({ force: true });
  const row = async () => (await suite.stack.db.admin(`select status, workflow_version, error from durable_runs where id = $1`, [runId])).rows[0];
  expect(await row()).toMatchObject({ status: 'pending', workflow_version: 1 });

  // A release that does not register v1 nor declares it retired: left to the workers that may register it.
  const unknown = await sweeperOf([]).sweep();
  expect(unknown.unregistered).toEqual({ 'golden-path@v1': 1 });
  expect(unknown.reenqueued).toBe(0);
  expect(await row()).toMatchObject({ status: 'pending', error: null });

  // A release that declares v1 retired: the run fails, as a worker of that release fails it from a job.
  const sweeper = sweeperOf(['golden-path@v1']);
  const retired = await sweeper.sweep();
  expect(retired.failedRetired).toBe(1);
  expect(retired.reenqueued).toBe(0);
  expect(retired.unregistered).toEqual({});
  const failed = await row();
  expect(failed.status).toBe('failed');
  expect(failed.error).toMatchObject({ code: 'workflow_version_retired', sequence_num: 1 });
  expect(failed.error.message).toContain('golden-path@v1');
  // Nothing enqueued for it, and a second sweep has nothing left to do.
  expect((await queue.getJobCounts('wait')).wait ?? 0).toBe(0);
  const again = await sweeper.sweep();
  expect(again.failedRetired).toBe(0);
  expect(await row()).toMatchObject({ status: 'failed' });
});

it('a run of a retired version whose run job is still queued (a backlog an older release still works through) is not failed by a sweep; once that job is gone it is', { timeout: 120_000 }, async () => {
  // Lists that disagree (ADR 0008): the new release declares v1 retired while an older release's
  // workers still register it and work through the queue. The run's row is untouched for
  // SWEEPER_MIN_AGE while its job waits behind others (or runs a long step): failing it then fails a
  // run a worker is carrying or will carry on. Its job is found by its id, which carries the run's
  // idempotency hash (the step names, from the definition no process here has, are not needed).
  const {
    runs: [runId],
    jobs: jobsOfRun,
  } = await queuedRuns(1);
  const row = async () => (await suite.stack.db.admin(`select status, error from durable_runs where id = $1`, [runId])).rows[0];

  const sweeper = sweeperOf(['golden-path@v1']);
  const queued = await sweeper.sweep();
  expect(queued.failedRetired).toBe(0);
  expect(queued.reenqueued).toBe(0);
  expect(await row()).toMatchObject({ status: 'pending', error: null });

  // Its job gone (Redis lost it): now nothing will carry it on, and the sweep fails it, once.
  for (const job of await jobsOfRun()) await job.remove();
  const lost = await sweeper.sweep();
  expect(lost.failedRetired).toBe(1);
  expect(await row()).toMatchObject({ status: 'failed', error: { code: 'workflow_version_retired', sequence_num: 1 } });
  expect((await sweeper.sweep()).failedRetired).toBe(0);
});

it('runs of a retired version left undecided because their queue holds more live jobs than liveSnapshotMax are logged once per sweep for the queue, with their count; failed once it holds no more', { timeout: 120_000 }, async () => {
  // Above liveSnapshotMax live jobs the queue is not listed, and a retired version's run job cannot be
  // looked up by id without its step names: its run is left undecided. That was silent (a count in the
  // report no log line showed), so an operator could not tell why such a run was never failed.
  const { runs, queue, jobs: jobsOfRuns } = await queuedRuns(2);
  // Redis loses both jobs; two others (of no run) keep the queue above the limit of 1.
  for (const job of await jobsOfRuns()) await job.remove();
  for (const name of ['filler-1', 'filler-2']) await queue.add(name, {}, { jobId: `filler-${randomUUID()}`, delay: 3_600_000 });
  const status = async () => (await suite.stack.db.admin(`select status from durable_runs where id = any($1::uuid[]) order by id`, [runs])).rows.map((r) => r.status);

  const log = capturedLog();
  const sweeper = sweeperOf(['golden-path@v1'], { liveSnapshotMax: 1, logger: pino({ level: 'warn' }, log.destination) });
  const undecidedLines = () => log.lines.filter((l) => l.queue === GOLDEN_PATH_QUEUE && /retired/.test(l.msg) && /liveSnapshotMax/.test(l.msg));
  const dropFillers = async () => {
    for (const job of await queue.getJobs(['delayed'])) if (job.id?.startsWith('filler-')) await job.remove();
  };
  try {
    const first = await sweeper.sweep();
    expect(first.failedRetired).toBe(0);
    expect(first.undecided.active).toBe(2);
    expect(await status()).toEqual(['pending', 'pending']);
    // One line for the queue with the count, not one per run.
    await waitFor(async () => undecidedLines().length > 0, { timeoutMs: 30_000, what: "the sweep's line for the queue" });
    expect(undecidedLines()).toHaveLength(1);
    expect(undecidedLines()[0]).toMatchObject({ level: 40, queue: GOLDEN_PATH_QUEUE, undecided_retired_runs: 2, live_snapshot_max: 1 });
    // Once per sweep: the next sweep says it again.
    await sweeper.sweep();
    await waitFor(async () => undecidedLines().length === 2, { timeoutMs: 30_000, what: "the next sweep's line" });
  } finally {
    // The backlog down to the limit (and nothing left for the next test's queue).
    await dropFillers();
  }

  // The queue is listed, no job of the runs is in it, and they fail, without the line.
  const listed = await sweeper.sweep();
  expect(listed.failedRetired).toBe(2);
  expect(await status()).toEqual(['failed', 'failed']);
  expect(undecidedLines()).toHaveLength(2);
});

it("a retired version's run whose queue's listing fails is left undecided and said so for the queue, then failed by the next sweep", { timeout: 120_000 }, async () => {
  // No other run of the queue needed the listing, so the pass's own "could not tell" line was not
  // written either: the run's queue gets the line, with the reason.
  const {
    runs: [runId],
    queue,
    jobs: jobsOfRun,
  } = await queuedRuns(1);
  for (const job of await jobsOfRun()) await job.remove();
  const status = async () => (await suite.stack.db.admin(`select status from durable_runs where id = $1`, [runId])).rows[0].status;

  const log = capturedLog();
  const sweeper = sweeperOf(['golden-path@v1'], { logger: pino({ level: 'warn' }, log.destination) });
  const lines = () => log.lines.filter((l) => l.queue === GOLDEN_PATH_QUEUE && /retired/.test(l.msg) && /listing .* failed/.test(l.msg));
  const listing = failingOnce(queue, 'getRanges', () => new Error('Command timed out'));
  try {
    const first = await sweeper.sweep();
    expect(listing.calls()).toBe(1);
    expect(first.failedRetired).toBe(0);
    expect(first.undecided.active).toBe(1);
    expect(await status()).toBe('pending');
    await waitFor(async () => lines().length > 0, { timeoutMs: 30_000, what: "the sweep's line for the queue" });
    expect(lines()).toEqual([expect.objectContaining({ level: 40, queue: GOLDEN_PATH_QUEUE, undecided_retired_runs: 1 })]);
  } finally {
    listing.restore();
  }
  expect((await sweeper.sweep()).failedRetired).toBe(1);
  expect(await status()).toBe('failed');
  expect(lines()).toHaveLength(1);
});
