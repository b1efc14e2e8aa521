/**
 * Recovery of the durable runtime with real, separate worker processes (test/helpers/test-worker.ts):
 * kills land in the middle of a step of the gp-slow workflow (the golden path's real steps behind a
 * gate), and every assertion reads PostgreSQL under the run's tenant. Faults that would disturb
 * other people (FLUSHALL, stopping PostgreSQL) run against this file's own redis-server and its own
 * throwaway PostgreSQL cluster.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { pino } from 'pino';
import pg from 'pg';
import { DurableRuntime, type RunRow, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { AppError } from '../../src/platform/errors/app-error.ts';
import { parseConfig } from '../../src/platform/config/config.ts';
import { setupDatabase } from '../../src/platform/db/roles.ts';
import { migrate } from '../../src/platform/db/migrate.ts';
import { entities } from '../../src/entities.ts';
import { IDEMPOTENCY_EXPIRY_JOB, MAINTENANCE_QUEUE } from '../../src/platform/queue/maintenance.ts';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { SLOW_QUEUE, SLOW_TAG, slowWorkflow, type StepGate } from '../helpers/slow-workflow.ts';
import { startOwnPostgres, startOwnRedis, type OwnPostgres, type OwnRedis } from '../helpers/own-infra.ts';
import { TEST_APP, TEST_JWT_SECRET, TEST_OWNER } from '../helpers/env.ts';
import { SLOW_STEPS, createSlowRun, enteredThroughLast, expectEveryStepOnce, expectOneVerifiedPack, jobOf, killLiveWorkers, readRun, waitEntered, waitRun, stackSweeper } from '../helpers/recovery.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 180_000;

describe('a killed or stopped worker: the run still completes, each step exactly once', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()] });
  });
  afterEach(async () => killLiveWorkers(stack));
  afterAll(async () => stack?.stop());

  // Step 4 is the evidence step: the resumed run has one pack, one seal and one hash, which verifies.
  it.each([2, 4])('a worker SIGKILLed in the middle of a step (step %i) is resumed by another worker; every step has one checkpoint and one domain row', { timeout: LONG }, async (seq) => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: [...Array<string>(seq - 1).fill('0'), 'hang'].join(',') });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, seq);
    const before = await readRun(stack, tenant, run.id);
    expect(before.sequence_num).toBe(seq - 1); // the kill lands inside the step, before it can commit
    first.kill('SIGKILL');
    await first.exited;

    const second = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    expect(await enteredThroughLast(second, run.id)).toEqual(SLOW_STEPS.map((_, i) => i + 1).slice(seq - 1));
    await expectOneVerifiedPack(stack, tenant, run.id);
  });

  it('a run resumes from its last checkpoint after a kill: completed steps are not run again and progress moves on', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,0,hang' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 3);
    const before = await readRun(stack, tenant, run.id);
    expect(before.sequence_num).toBe(2);
    first.kill('SIGKILL');
    await first.exited;

    const second = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    await waitFor(async () => (await readRun(stack, tenant, run.id)).sequence_num > 2, { timeoutMs: 60_000, what: 'progress past the last checkpoint' });
    const done = await waitRun(stack, tenant, run.id, ['completed']);
    expectEveryStepOnce(done);
    // The two checkpoints written before the kill are the very same rows: replayed, never redone.
    expect(done.checkpoints.slice(0, 2)).toEqual(before.checkpoints);
    expect(await enteredThroughLast(second, run.id)).toEqual([3, 4]);
    // The run job returns its outcome (what Bull Board shows): steps 1-2 replayed from their checkpoints, 3-4 executed.
    // Read once the job has completed: the run reads completed at its last commit, the job only when the
    // worker's execution has returned (a loaded machine read it still active, its returnvalue null).
    const job = await waitFor(async () => ((await (await jobOf(stack, run, 1))?.getState()) === 'completed' ? jobOf(stack, run, 1) : undefined), { what: 'the run job to complete in Redis' });
    expect(job?.returnvalue).toMatchObject({ run_id: run.id, from_sequence_num: 1, status: 'ended' });
    expect(job?.returnvalue.steps.map((s: { sequence_num: number; replayed: boolean; status: string }) => [s.sequence_num, s.status, s.replayed])).toEqual([
      [1, 'completed', true],
      [2, 'completed', true],
      [3, 'completed', false],
      [4, 'completed', false],
    ]);
  });

  it('a second stall of the same step does not fail the run', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    for (let i = 0; i < 2; i++) {
      const w = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,hang' });
      await waitEntered(w, run.id, 2);
      w.kill('SIGKILL');
      await w.exited;
    }
    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    expect((await jobOf(stack, run, 1))?.stalledCounter).toBeGreaterThanOrEqual(2);
  });

  it('two executions of the same run job at once: each step runs once, one effect and one checkpoint per step', { timeout: LONG }, async () => {
    const tenant = newTenant();
    let inside = 0;
    let release!: () => void;
    const together = new Promise<void>((r) => (release = r));
    // Both executions are inside step 1's body, each in its own transaction, before either goes on.
    const gate: StepGate = async ({ seq }) => {
      if (seq !== 1) return;
      if (++inside === 2) release();
      await together;
    };
    const logger = pino({ level: 'silent' });
    const runtime = new DurableRuntime({ workflows: [slowWorkflow({ gate })], queues: new Map(), logger });
    const executor = (workerId: string) => new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId, leaseMs: 5000 });
    const run = await createSlowRun(stack, tenant, { enqueue: false });
    // A queue no worker listens on: the two executions below are the only ones.
    const queue = new Queue(`${SLOW_QUEUE}-direct`, { connection: stack.container.redis, prefix: stack.prefix });
    try {
      const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: run.workflow, step: 'partner-dossier', sequence_num: 1, _correlation_id: run.correlation_id };
      const job = await Job.create(queue, 'partner-dossier', data, { jobId: `${SLOW_TAG}-dup-${run.id}`, attempts: 5 });
      const twin = (await Job.fromId<StepJobData>(queue, job.id!))!;
      const outcomes = await Promise.all([executor('worker-a').process(job), executor('worker-b').process(twin)]);
      expect(inside).toBe(2);
      // Step 1: one execution committed it, the other lost the race and replayed its stored output.
      const first = outcomes.map((o) => o.steps.find((s) => s.sequence_num === 1)!);
      expect(first.map((s) => s.replayed).sort()).toEqual([false, true]);
      // Every step was executed by exactly one of the two; the other replayed it.
      const executed = outcomes.flatMap((o) => o.steps.filter((s) => !s.replayed).map((s) => s.sequence_num)).sort();
      expect(executed).toEqual([1, 2, 3, 4]);
      expect(outcomes.map((o) => o.status)).toEqual(['ended', 'ended']);
      expectEveryStepOnce(await readRun(stack, tenant, run.id));
    } finally {
      await queue.close();
      // Should this run be left incomplete, end it so no sweeper picks it up for another test.
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  });

  it('two executions at once, one failing a step for good that the other completed: the run is not failed, it completes', { timeout: LONG }, async () => {
    const tenant = newTenant();
    let atTwo = 0;
    let secondIn!: () => void;
    const secondEntered = new Promise<void>((r) => (secondIn = r));
    let failureHandled = false;
    let runId = '';
    const stepTwoStored = async () => (await stack.db.admin(`select count(*)::int as n from durable_checkpoints where run_id = $1 and sequence_num = 2`, [runId])).rows[0].n > 0;
    const gate: StepGate = async ({ seq }) => {
      if (seq === 2) {
        // The first execution commits step 2; the second fails it for good once it is committed.
        if (++atTwo === 1) return void (await secondEntered);
        secondIn();
        await waitFor(stepTwoStored, { timeoutMs: 30_000, what: 'the other execution to commit step 2' });
        throw new AppError('partner_api_refused', 'refused for good', { retryable: false });
      }
      // Step 3 waits until the failing execution has dealt with its failure.
      if (seq === 3) await waitFor(() => failureHandled, { timeoutMs: 30_000, what: 'the failure to be handled' });
    };
    const logger = pino({ level: 'warn' }, { write: (line: string) => void (line.includes('another execution of the job had completed it') && (failureHandled = true)) });
    const runtime = new DurableRuntime({ workflows: [slowWorkflow({ gate })], queues: new Map(), logger });
    const executor = (workerId: string) => new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId, leaseMs: 5000 });
    const run = await createSlowRun(stack, tenant, { enqueue: false });
    runId = run.id;
    const queue = new Queue(`${SLOW_QUEUE}-direct-fail`, { connection: stack.container.redis, prefix: stack.prefix });
    try {
      const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: run.workflow, step: 'partner-dossier', sequence_num: 1, _correlation_id: run.correlation_id };
      const job = await Job.create(queue, 'partner-dossier', data, { jobId: `${SLOW_TAG}-dupfail-${run.id}`, attempts: 5 });
      const twin = (await Job.fromId<StepJobData>(queue, job.id!))!;
      const outcomes = await Promise.allSettled([
        executor('worker-a').process(job),
        executor('worker-b').process(twin).finally(() => (failureHandled = true)),
      ]);
      // Before the fix the failing execution failed the run (the other then flipped it to completed, error kept).
      expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled']);
      const after = await readRun(stack, tenant, run.id);
      expect(after.status).toBe('completed');
      expect(after.error).toBeNull();
      expectEveryStepOnce(after);
    } finally {
      await queue.close();
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  });

  it('a run that already has a live run job gets no second one when a retried submission makes sure it is enqueued', { timeout: LONG }, async () => {
    const tenant = newTenant();
    // No worker runs: the run job stays waiting, as while a first attempt's job is queued or active.
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    // The run row says two steps are done, as an older worker that moved it at every step left it.
    await stack.db.admin('update durable_runs set sequence_num = 2, status = $2 where id = $1', [run.id, 'running']);
    const [moved] = (await stack.db.admin('select * from durable_runs where id = $1', [run.id])).rows as RunRow[];
    await stack.container.runtime.ensureEnqueued(moved!);
    const queue = stack.container.queues.get(SLOW_QUEUE)!;
    const jobs = (await queue.getJobs(['waiting', 'active', 'delayed', 'prioritized'])).filter((j) => j.data.run_id === run.id);
    // The one job that carries the run (it started at step 1); adding one from step 3 would run beside it.
    expect(jobs.map((j) => j.data.sequence_num)).toEqual([1]);
    await Promise.all(jobs.map((j) => j.remove()));
    await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
  });

  /** A sweeper of this stack under its own lock key (so its first sweep is a "Redis lost" one), and how often it logged re-enqueueing a run. */
  function loggedSweeper(lock: string, opts: { batch?: number; liveSnapshotMax?: number } = {}) {
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    const sweeper = stackSweeper(stack, lock, { logger, ...opts });
    const reenqueued = (id: string) => lines.filter((l) => l.includes('sweeper re-enqueued run') && l.includes(id)).length;
    return { sweeper, reenqueued, lines };
  }

  it('the sweeper pages past runs whose jobs are alive and re-enqueues, across tenants, the one that has none', { timeout: LONG }, async () => {
    const { sweeper, reenqueued, lines } = loggedSweeper('test-sweeper-lock', { batch: 1 });
    const [alive1, alive2] = [await createSlowRun(stack, newTenant(), { enqueue: true }), await createSlowRun(stack, newTenant(), { enqueue: true })];
    // Committed but never enqueued, as after a crash between the commit and the enqueue; and the newest.
    const lost = await createSlowRun(stack, newTenant(), { enqueue: false });

    const first = await sweeper.sweep();
    expect(first.redisLost).toBe(true); // no marker yet under this lock key: the first sweep repairs waiting runs too
    expect(first.examined).toBeGreaterThanOrEqual(3);
    expect(await (await jobOf(stack, lost, 1))?.getState()).toBe('waiting');
    const second = await sweeper.sweep();
    expect(second.redisLost).toBe(false);
    expect([reenqueued(alive1.id), reenqueued(alive2.id), reenqueued(lost.id)]).toEqual([0, 0, 1]);
    // The recovery shows among the run's lines: found by its correlation id as well as its run id.
    const line = JSON.parse(lines.find((l) => l.includes('sweeper re-enqueued run') && l.includes(lost.id))!);
    expect(line).toMatchObject({ run_id: lost.id, tenant_id: lost.tenant_id, correlation_id: lost.correlation_id, from_sequence_num: 1 });
  });

  it.each([
    ['listing the queue once', undefined],
    ['one look per run, above the listing bound', 0],
  ] as const)('a sweep over pending runs whose jobs wait finds them in Redis (%s): none of them costs a PostgreSQL read', { timeout: LONG }, async (_, liveSnapshotMax) => {
    const { sweeper, reenqueued } = loggedSweeper(`test-sweeper-lock-3-${liveSnapshotMax ?? 'all'}`, { batch: 5_000, ...(liveSnapshotMax === undefined ? {} : { liveSnapshotMax }) });
    const tenants = [newTenant(), newTenant(), newTenant()];
    // A backlog: pending runs of three tenants whose run jobs wait in the queue (no worker takes them).
    const waiting = await Promise.all(Array.from({ length: 24 }, (_, i) => createSlowRun(stack, tenants[i % 3]!, { enqueue: true })));
    await sweeper.sweep(); // the first sweep under a new lock key also repairs waiting runs: out of the way
    // The control: committed but never enqueued, so it has no job and must be read and re-enqueued.
    const lost = await createSlowRun(stack, tenants[0]!, { enqueue: false });
    // Every statement the sweep sends to PostgreSQL, with its parameters.
    const sent: string[] = [];
    const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
    const query = proto.query;
    proto.query = function recorded(this: unknown, ...args: unknown[]) {
      for (const a of args) {
        if (typeof a === 'string') sent.push(a);
        else if (Array.isArray(a)) sent.push(a.map(String).join(' '));
        else if (a && typeof a === 'object') sent.push(`${String((a as { text?: unknown }).text)} ${((a as { values?: unknown[] }).values ?? []).map(String).join(' ')}`);
      }
      return query.apply(this, args);
    };
    let report;
    try {
      report = await sweeper.sweep();
    } finally {
      proto.query = query;
    }
    expect(report.examined).toBeGreaterThanOrEqual(waiting.length + 1);
    const readOf = (id: string) => sent.filter((s) => s.includes(id)).length;
    expect(waiting.map((r) => readOf(r.id))).toEqual(waiting.map(() => 0));
    expect(readOf(lost.id)).toBeGreaterThan(0);
    expect(waiting.map((r) => reenqueued(r.id))).toEqual(waiting.map(() => 0));
    expect(reenqueued(lost.id)).toBe(1);
    for (const run of [...waiting, lost]) {
      expect(await (await jobOf(stack, run, 1))?.getState(), run.id).toBe('waiting');
      await (await jobOf(stack, run, 1))?.remove();
      await tenantEm(stack.container.orm, run.tenant_id).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  });

  it('the sweeper leaves alone a run whose job from step 1 carries it past a step that may wait but did not', { timeout: LONG }, async () => {
    const { sweeper, reenqueued } = loggedSweeper('test-sweeper-lock-2');
    const tenant = newTenant();
    // No worker runs: the job that started at step 1 stays waiting, as while it is between steps 3 and 4.
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    // Steps 1-3 done, the approval (step 3, which may wait) approved by policy: the run row moved only at its first step.
    await stack.db.admin(`update durable_runs set status = 'running', sequence_num = 1, updated_at = now() - interval '1 minute' where id = $1`, [run.id]);
    for (const [i, name] of SLOW_STEPS.slice(0, 3).entries()) {
      await stack.db.admin(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
         values (gen_random_uuid(), $1, $2, $3, $4, 'completed', '{}', 1, now(), now(), now())`,
        [tenant, run.id, i + 1, name],
      );
    }
    await sweeper.sweep();
    await sweeper.sweep();
    // Step 4's stretch starts after the step that may wait, but the live job is the one from step 1.
    expect(reenqueued(run.id)).toBe(0);
    expect(await jobOf(stack, run, 4)).toBeUndefined();
    expect(await (await jobOf(stack, run, 1))?.getState()).toBe('waiting');
    await (await jobOf(stack, run, 1))?.remove();
    await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
  });

  it.each(['reordered', 'renamed'] as const)('%s steps against existing checkpoints fail the run loudly as non-determinism', { timeout: LONG }, async (variant) => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,hang' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 2);
    first.kill('SIGKILL');
    await first.exited;

    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0', GP_SLOW_VARIANT: variant });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('failed');
    expect(done.error).toMatchObject({ code: 'non_determinism', sequence_num: 2 });
    expect(done.checkpoints.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'failed']]);
    expect(done.counts).toMatchObject({ partner_dossiers: 1, economics_models: 0, approval_requests: 0, evidence_packs: 0 });
    // Unrecoverable: no retries were spent on it.
    await waitFor(async () => (await (await jobOf(stack, run, 1))?.getState()) === 'failed', { timeoutMs: 30_000, what: 'the job to fail' });
    expect((await jobOf(stack, run, 1))?.attemptsMade).toBe(1);
  });

  it('SIGTERM during a step: the step finishes within the grace period, the worker exits 0, and the run completes', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,sigterm' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 2);
    first.kill('SIGTERM');
    expect(await within(first.exited, 'the worker to exit after its step', 60_000)).toBe(0);
    const stopped = await readRun(stack, tenant, run.id);
    expect(stopped.sequence_num).toBe(2); // step 2 finished; no new job was taken after the signal

    const second = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    expect(await enteredThroughLast(second, run.id)).toEqual([3, 4]);
  });

  it('SIGTERM during a step longer than the grace period: the job is handed back, the worker exits 0, another worker completes the run', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,hang', WORKER_SHUTDOWN_GRACE: '1s' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 2);
    first.kill('SIGTERM');
    expect(await within(first.exited, 'the worker to exit at its grace')).toBe(0);
    expect(first.output()).toContain('handing them back');
    expect((await readRun(stack, tenant, run.id)).sequence_num).toBe(1);

    const second = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    expect(await enteredThroughLast(second, run.id)).toEqual([2, 3, 4]);
  });
});

describe('Redis flushed with runs in flight (own redis-server)', () => {
  let redis: OwnRedis;
  let stack: TestStack;
  beforeAll(async () => {
    redis = await startOwnRedis();
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()], env: { REDIS_URL: redis.url } });
  });
  afterAll(async () => {
    await stack?.stop();
    await redis?.stop();
  });

  it('after FLUSHALL the sweeper re-enqueues every incomplete run from its last checkpoint, all complete exactly once, and the Job Schedulers come back', { timeout: LONG }, async () => {
    // One job at a time per worker: at the flush two runs are in a worker's hands (their jobs carry them
    // on in memory) and four exist only as waiting jobs in Redis, which the flush loses.
    const slow = { GP_SLOW_STEP_MS: '700', WORKER_CONCURRENCY: '1' };
    const workers = [await stack.spawnWorker(slow), await stack.spawnWorker(slow)];
    const tenants = [newTenant(), newTenant()];
    const runs: Array<{ tenant: string; run: RunRow }> = [];
    for (let i = 0; i < 6; i++) {
      const tenant = tenants[i % 2]!;
      runs.push({ tenant, run: await createSlowRun(stack, tenant, { enqueue: true }) });
    }
    await waitFor(async () => (await readRun(stack, runs[0]!.tenant, runs[0]!.run.id)).sequence_num >= 1, { timeoutMs: 60_000, what: 'first checkpoint' });
    const inFlight = await Promise.all(runs.map(({ tenant, run }) => readRun(stack, tenant, run.id)));
    expect(inFlight.every((r) => r.status !== 'completed')).toBe(true);
    // The Job Schedulers the workers upserted at start (the flush loses them too).
    const maintenance = stack.container.queues.get(MAINTENANCE_QUEUE)!;
    const schedulers = async () => (await maintenance.getJobSchedulers()).map((j) => ({ key: j.key, name: j.name, every: j.every, next: typeof j.next })).sort((a, b) => a.key.localeCompare(b.key));
    const before = await schedulers();
    expect(before).toContainEqual({ key: IDEMPOTENCY_EXPIRY_JOB, name: IDEMPOTENCY_EXPIRY_JOB, every: 10 * 60_000, next: 'number' });
    await redis.client.flushall();
    expect(await schedulers()).toEqual([]);

    for (const { tenant, run } of runs) {
      const done = await waitRun(stack, tenant, run.id, ['completed', 'failed'], 120_000);
      expect(done.status).toBe('completed');
      expectEveryStepOnce(done);
    }
    // Log lines are written in batches: poll for the sweeper's, which it wrote before the runs completed.
    await waitFor(() => workers.some((w) => w.output().includes('sweeper re-enqueued run')), { timeoutMs: 30_000, what: "the sweeper's log line" });
    // The sweeper put every Job Scheduler back, each with its next run due.
    await waitFor(async () => JSON.stringify(await schedulers()) === JSON.stringify(before), { timeoutMs: 30_000, what: 'the Job Schedulers to be re-created' });
    expect(await maintenance.getJobScheduler(IDEMPOTENCY_EXPIRY_JOB)).toMatchObject({ every: 10 * 60_000 });
  });
});

describe('PostgreSQL restarted (own throwaway cluster)', () => {
  let pg: OwnPostgres;
  let stack: TestStack;
  beforeAll(async () => {
    pg = await startOwnPostgres();
    const url = (role: { user: string; password: string }) => `postgres://${role.user}:${role.password}@127.0.0.1:${pg.port}/dealix_restart`;
    await setupDatabase({ adminUrl: pg.adminUrl, ownerUrl: url(TEST_OWNER), appUrl: url(TEST_APP) });
    await migrate(parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: url(TEST_APP), MIGRATION_DATABASE_URL: url(TEST_OWNER) }), entities);
    stack = await startStack({ workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()], env: { DATABASE_URL: url(TEST_APP), MIGRATION_DATABASE_URL: url(TEST_OWNER) } });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
    await pg?.destroy();
  });

  it('while the database is down the API answers 503 problem+json, and afterwards the same worker finishes the work', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const token = await stack.token({ tenantId: tenant, sub: 'submitter' });
    // Step 2 waits 5 s before its statements: long enough for the test to see it entered (through the worker's
    // log, written in batches) and stop PostgreSQL before the step, and the quick steps after it, commit the run.
    const worker = await stack.spawnWorker({ GP_SLOW_STEP_MS: '0,5000' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(worker, run.id, 2);
    await pg.stop();

    for (const [method, path, body] of [
      ['GET', '/api/v1/golden-path/runs', undefined],
      ['POST', '/api/v1/golden-path/run', CLASS_A_SUBMISSION],
    ] as const) {
      const res = await api(stack, method, path, { token, body, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(503);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json).toMatchObject({ status: 503, code: 'service_unavailable' });
      expect(res.headers.get('retry-after')).toBeTruthy();
    }

    // Down long enough for step 2 to spend all its attempts: an unreachable database must not fail the run.
    await waitFor(async () => (await (await jobOf(stack, run, 1))?.getState()) === 'failed', { timeoutMs: 60_000, intervalMs: 250, what: 'step 2 to fail for good' });
    await pg.start();
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed'], 120_000);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    expect(worker.proc.exitCode).toBeNull();

    const res = await waitFor(async () => {
      const r = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      return r.status === 202 ? r : undefined;
    }, { timeoutMs: 30_000, what: 'the API to accept work again' });
    await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token })).json?.status === 'completed', { timeoutMs: 60_000, what: 'a new run to complete' });
  });
});
