/**
 * Faults around the recovery machinery that the other recovery tests do not aim at directly: sweeps
 * overlapping on two processes (the sweeper's lock lapsed under a long sweep, or two lock keys), and a
 * worker killed after a step's commit reached PostgreSQL but before BullMQ heard the job finish.
 * Real worker processes (test/helpers/test-worker.ts); every assertion reads PostgreSQL under the run's tenant.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { pausableProxy } from '../helpers/held-proxy.ts';
import { SLOW_QUEUE, slowWorkflow } from '../helpers/slow-workflow.ts';
import { SLOW_STEPS, createSlowRun, entered, enteredThroughLast, expectEveryStepOnce, jobOf, killLiveWorkers, readRun, stopForWholeLog, waitEntered, waitRun, stackSweeper } from '../helpers/recovery.ts';
import type { RunRow } from '../../src/platform/durable/runtime.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 180_000;

describe('recovery under overlapping sweeps and a kill after a commit', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()] });
  });
  afterEach(async () => killLiveWorkers(stack));
  afterAll(async () => stack?.stop());

  /** Takes the run's job from step 1 out of the queue as a worker would, and finishes it (`how`) without running it: a leftover under its id. */
  async function leaveFinished(run: RunRow, how: 'failed' | 'completed'): Promise<void> {
    const connection = new Redis(stack.env.REDIS_URL!, { maxRetriesPerRequest: null });
    const worker = new Worker(SLOW_QUEUE, null, { connection, prefix: stack.prefix, autorun: false });
    try {
      const token = randomUUID();
      const job = await waitFor(async () => worker.getNextJob(token), { what: 'the job to fetch' });
      expect(job.id).toBe((await jobOf(stack, run, 1))?.id);
      if (how === 'failed') await job.moveToFailed(new UnrecoverableError('lost on infrastructure (test)'), token, false);
      else await job.moveToCompleted('left behind (test)', token, false);
    } finally {
      await worker.close();
      connection.disconnect();
    }
  }

  it('two sweepers at once over runs without a live job (never enqueued, a failed or a completed leftover): each run gets one job, and completes with each step once', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const lost = [await createSlowRun(stack, tenant, { enqueue: false }), await createSlowRun(stack, tenant, { enqueue: false })];
    const failed: RunRow[] = [];
    const completed: RunRow[] = [];
    for (let i = 0; i < 2; i++) {
      const f = await createSlowRun(stack, tenant, { enqueue: true });
      await leaveFinished(f, 'failed');
      failed.push(f);
      const c = await createSlowRun(stack, tenant, { enqueue: true });
      await leaveFinished(c, 'completed');
      completed.push(c);
    }
    const runs = [...lost, ...failed, ...completed];
    // Two processes' sweepers (two lock keys: as two sweeps overlap once a long sweep outlives its lock).
    const a = stackSweeper(stack, 'overlap-a');
    const b = stackSweeper(stack, 'overlap-b');
    for (let round = 0; round < 4; round++) await Promise.all([a.sweep(), b.sweep()]);
    for (const run of runs) expect(await (await jobOf(stack, run, 1))?.getState(), run.id).toBe('waiting');
    expect(await stack.container.queues.get(SLOW_QUEUE)!.getJobCountByTypes('wait', 'active', 'delayed', 'prioritized')).toBe(runs.length);

    const worker = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    for (const run of runs) {
      const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
      expect(done.status).toBe('completed');
      expectEveryStepOnce(done);
      expect(await enteredThroughLast(worker, run.id)).toEqual(SLOW_STEPS.map((_, i) => i + 1));
    }
  });

  it("a worker killed after its run's last step committed but before BullMQ heard the job finish: the re-delivery ends the job without a step, counts no crash, and the run stays completed once", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const proxy = await pausableProxy(stack.env.REDIS_URL!);
    try {
      // The last step takes a moment, so the worker's Redis is cut off while it runs; its commit goes to PostgreSQL.
      // The moment is long enough for the step's entry to be seen through the worker's log (written in batches,
      // read through a pipe by a loaded machine) and the cut to be made before the step ends.
      const first = await stack.spawnWorker({ REDIS_URL: proxy.url, GP_SLOW_STEP_MS: '0,0,0,5000' });
      const run = await createSlowRun(stack, tenant, { enqueue: true });
      await waitEntered(first, run.id, SLOW_STEPS.length);
      proxy.pause();
      await waitRun(stack, tenant, run.id, ['completed', 'failed'], 30_000);
      // The job's completion waits in the socket: the job is still active, under a lock nobody renews.
      expect(await (await jobOf(stack, run, 1))?.getState()).toBe('active');
      first.kill('SIGKILL');
      await first.exited;
      // Its sockets closed, as the kernel closes a dead process's: Redis sees the worker gone (ADR 0016's liveness).
      await proxy.close();

      const second = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
      const job = await waitFor(async () => ((await (await jobOf(stack, run, 1))?.getState()) === 'completed' ? jobOf(stack, run, 1) : undefined), { timeoutMs: 60_000, what: 'the run job to complete' });
      expect(job?.stalledCounter).toBe(1);
      expect(job?.returnvalue).toMatchObject({ run_id: run.id, status: 'ended' });
      expect(job?.returnvalue.steps.map((s: { replayed: boolean }) => s.replayed)).toEqual(SLOW_STEPS.map(() => true));
      // No step ran again in the second worker: read once it has stopped, its whole log written (a line
      // written while it ran could still trail the job's completion in Redis, and its absence prove nothing).
      await stopForWholeLog(second);
      expect(entered(second, run.id)).toEqual([]);
      const done = await readRun(stack, tenant, run.id);
      expect(done.status).toBe('completed');
      expectEveryStepOnce(done);
      const { rows } = await stack.db.admin(`select crash_seq, crash_count from durable_runs where id = $1`, [run.id]);
      expect(rows[0]).toEqual({ crash_seq: null, crash_count: 0 });
    } finally {
      await proxy.close();
    }
  });
});
