/**
 * A sweep examines at most `maxPerSweep` runs of each kind (20,000 by default). Waiting runs do not move
 * while they wait for a human (their rows keep their `updated_at`), so a sweep that started again from
 * the oldest every time would look at the same oldest ones for ever: after a Redis loss with more runs
 * waiting than that, the newer ones would never get their SLA timer back. The bound is shrunk here so a
 * handful of runs stand for that many. Real worker process for the runs' steps; the sweeps in-process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, expectEveryStepOnce, killLiveWorkers, waitEntered, waitRun, stackSweeper } from '../helpers/recovery.ts';

const LONG = 180_000;
const RUNS = 5;

describe('a sweep bounded by maxPerSweep', () => {
  let stack: TestStack;
  beforeAll(async () => {
    // The default class B SLA (24 h): no timer fires during the test.
    stack = await startStack();
  });
  afterAll(async () => stack?.stop());

  it('after a Redis loss with more waiting runs than one sweep examines, later sweeps go on past them: every waiting run gets its SLA timer back', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const worker = await stack.spawnWorker();
    const ids: string[] = [];
    try {
      for (let i = 0; i < RUNS; i++) {
        const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
        expect(res.status).toBe(202);
        ids.push(res.json.run_id as string);
      }
      for (const id of ids) {
        await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json?.status === 'waiting', { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to wait` });
      }
    } finally {
      // No worker left to sweep (its own sweeper would repair everything at once) or to take a timer.
      worker.kill('SIGKILL');
      await worker.exited;
    }
    const { rows } = await stack.db.admin(`select id, idempotency_hash from durable_runs where id = any($1::uuid[])`, [ids]);
    const timerOf = new Map(rows.map((r) => [r.id as string, namedJobId('gp', r.idempotency_hash as string, 'sla')]));
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    // Every run's timer is there, then lost as in a flush (the sweeper's marker lives under a key of its own here: gone too).
    for (const id of ids) expect(await timers.getJobState(timerOf.get(id)!), id).toBe('delayed');
    for (const id of ids) await timers.remove(timerOf.get(id)!);

    const sweeper = stackSweeper(stack, 'window-sweeper-lock', { batch: 1, maxPerSweep: 2 });
    const reports = [];
    // Enough sweeps to go over every waiting run twice at two a sweep.
    for (let i = 0; i < RUNS; i++) reports.push(await sweeper.sweep());
    expect(reports[0]!.redisLost).toBe(true);
    const states = await Promise.all(ids.map((id) => timers.getJobState(timerOf.get(id)!)));
    expect(states).toEqual(ids.map(() => 'delayed'));
    // Once each: a sweep never re-created a timer that was there.
    expect(reports.reduce((n, r) => n + r.repairedWaiting, 0)).toBe(RUNS);
  });
});

describe("Redis flushed while a run waits for a human and a tenant's run jobs are parked at its cap (own redis-server)", () => {
  let stack: TestStack;
  beforeAll(async () => {
    // Thirty seconds of class B SLA: the flush lands long before it; one run job at a time per tenant.
    stack = await startStack({ ownRedis: true, workerEntry: 'test/helpers/test-worker.ts', extraWorkflows: [slowWorkflow()], env: { APPROVAL_SLA_B: '30s', WORKER_MAX_ACTIVE_RUNS_PER_TENANT: '1' } });
  });
  afterAll(async () => {
    await killLiveWorkers(stack);
    await stack?.stop();
  });

  it('the waiting run still expires at its deadline, and the parked runs and the one whose worker was SIGKILLed complete, each step once', { timeout: LONG }, async () => {
    const waiter = newTenant();
    const capped = newTenant();
    const submitter = await stack.token({ tenantId: waiter, sub: 'submitter-1' });
    // Every gp-slow step hangs in this worker: the capped tenant's first run holds its one slot.
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: 'hang' });
    const holder = await createSlowRun(stack, capped, { enqueue: true });
    await waitEntered(first, holder.id, 1);
    const parked = [await createSlowRun(stack, capped, { enqueue: true }), await createSlowRun(stack, capped, { enqueue: true })];
    const parkedKey = `${stack.prefix}:tenant-parked:${capped}`;
    await waitFor(async () => (await stack.ownRedis!.client.zcard(parkedKey)) === 2, { timeoutMs: 60_000, what: "the capped tenant's two other run jobs to be parked" });
    // The class B run last, just before the flush: its 30 s SLA runs from its wait, and a setup that took
    // longer than that under load (the waits above may take 60 s each) would have seen it expire before the flush.
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status).toBe(202);
    const waitingId = res.json.run_id as string;
    await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${waitingId}`, { token: submitter })).json?.status === 'waiting', { timeoutMs: 60_000, intervalMs: 100, what: 'the class B run to wait' });

    // Every job, lock, slot, parked set, timer and scheduler gone; the worker holding the slot killed mid-step.
    await stack.ownRedis!.client.flushall();
    first.kill('SIGKILL');
    await first.exited;
    // Still waiting after the flush: its timer had not fired, and is gone now.
    expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${waitingId}`, { token: submitter })).json.status).toBe('waiting');

    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    for (const run of [holder, ...parked]) {
      const done = await waitRun(stack, capped, run.id, ['completed', 'failed'], 120_000);
      expect(done.status, run.id).toBe('completed');
      expectEveryStepOnce(done);
    }
    const expired = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${waitingId}`, { token: submitter })).json;
        return r?.status !== 'waiting' ? r : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 200, what: 'the waiting run to expire at its deadline' },
    );
    expect(expired.status).toBe('approval_expired');
  });
});
