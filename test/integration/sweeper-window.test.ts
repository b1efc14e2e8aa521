/**
 * A sweep examines at most `maxPerSweep` runs of each kind (20,000 by default). Waiting runs do not move
 * while they wait for a human (their rows keep their `updated_at`), so a sweep that started again from
 * the oldest every time would look at the same oldest ones for ever: after a Redis loss with more runs
 * waiting than that, the newer ones would never get their SLA timer back. The bound is shrunk here so a
 * handful of runs stand for that many. Real worker process for the runs' steps; the sweeps in-process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, expectEveryStepOnce, failingOnce, killLiveWorkers, waitEntered, waitRun, stackSweeper } from '../helpers/recovery.ts';
import { capturedLog } from '../helpers/log-capture.ts';

const LONG = 180_000;
const RUNS = 5;

describe('a sweep bounded by maxPerSweep', () => {
  let stack: TestStack;
  beforeAll(async () => {
    // The default class B SLA (24 h): no timer fires during the test.
    stack = await startStack();
  });
  afterAll(async () => stack?.stop());

  /** `n` golden-path runs waiting for a human, each with its SLA timer; no worker left afterwards. */
  async function waitingRuns(n: number): Promise<string[]> {
    const tenant = newTenant();
    const submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    const worker = await stack.spawnWorker();
    const ids: string[] = [];
    try {
      for (let i = 0; i < n; i++) {
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
    return ids;
  }
  /** The SLA timer's job id of each run (of every waiting run in the database without `ids`). */
  async function timersOf(ids?: string[]): Promise<Map<string, string>> {
    const { rows } = ids
      ? await stack.db.admin(`select id, idempotency_hash from durable_runs where id = any($1::uuid[])`, [ids])
      : await stack.db.admin(`select id, idempotency_hash from durable_runs where status = 'waiting'`);
    return new Map(rows.map((r) => [r.id as string, namedJobId('gp', r.idempotency_hash as string, 'sla')]));
  }

  it('after a Redis loss with more waiting runs than one sweep examines, later sweeps go on past them: every waiting run gets its SLA timer back', { timeout: LONG }, async () => {
    const ids = await waitingRuns(RUNS);
    const timerOf = await timersOf(ids);
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

  it("a listing of the timers queue that fails once repairs no waiting run: none is taken for one whose timer is gone", { timeout: LONG }, async () => {
    await waitingRuns(2);
    const timerOf = await timersOf();
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    for (const [id, timer] of timerOf) expect(await timers.getJobState(timer), id).toBe('delayed');
    const markerKey = `${stack.prefix}:listing-marker`;
    await stack.redis.set(markerKey, 'kept');
    const log = capturedLog();
    const sweeper = stackSweeper(stack, 'listing-sweeper-lock', { markerKey, batch: 1, logger: pino({ level: 'warn' }, log.destination) });
    const listing = failingOnce(timers, 'getRanges', () => new Error('BUSY Redis is busy running a script'));
    try {
      const first = await sweeper.sweep();
      // Before, every waiting run (a page each) reused the rejection: a tenant transaction and a timer re-created each, and a warning each.
      expect(first.repairedWaiting).toBe(0);
      expect(first.undecided.waiting).toBe(timerOf.size);
      expect(log.lines.filter((l) => l.msg === 'sweeper repaired a waiting run whose timer was gone')).toEqual([]);
      const second = await sweeper.sweep();
      expect(listing.calls()).toBeGreaterThan(1);
      expect(second).toMatchObject({ repairedWaiting: 0, undecided: { waiting: 0 } });
    } finally {
      listing.restore();
    }
  });

  it('after a Redis loss, the repair of waiting runs goes on where it stopped at the next sweep, whichever worker makes it: every timer is back within ceil(waiting / maxPerSweep) sweeps', { timeout: LONG }, async () => {
    const MAX = 2;
    await waitingRuns(3 * MAX);
    // Every waiting run of the database (earlier tests' too): all their timers lost, and the marker (a key of its own here) with them.
    const timerOf = await timersOf();
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    for (const timer of timerOf.values()) await timers.remove(timer);
    // Two workers' sweepers (one lock, one marker) sweeping in turn, as they do when they win the lock in turn.
    const workers = [0, 1].map(() => stackSweeper(stack, 'turns-sweeper-lock', { batch: 1, maxPerSweep: MAX }));
    const sweeps = Math.ceil(timerOf.size / MAX);
    const reports = [];
    for (let i = 0; i < sweeps; i++) reports.push(await workers[i % 2]!.sweep());
    expect(reports[0]!.redisLost).toBe(true);
    const states = await Promise.all([...timerOf.values()].map((timer) => timers.getJobState(timer)));
    expect(states).toEqual([...timerOf.keys()].map(() => 'delayed'));
    expect(reports.slice(1).every((r) => !r.redisLost)).toBe(true);
    // Its place in Redis is deleted once it has reached the newest waiting run (one sweep more at most), never left for every later sweep to go on with.
    const repairKey = `${stack.prefix}:turns-sweeper-lock:loss-repair`;
    if (await stack.redis.exists(repairKey)) await workers[sweeps % 2]!.sweep();
    expect(await stack.redis.exists(repairKey)).toBe(0);
    const after = await workers[0]!.sweep();
    expect(after).toMatchObject({ redisLost: false, repairedWaiting: 0 });
  });

  it("a stretch of the repair after a loss does not write its progress over a repair started again meanwhile (an overlapping sweep that noticed a second loss)", { timeout: LONG }, async () => {
    await waitingRuns(2);
    const sweeper = stackSweeper(stack, 'overlap-sweeper-lock', { batch: 1, maxPerSweep: 1 });
    const repairKey = `${stack.prefix}:overlap-sweeper-lock:loss-repair`;
    const restarted = JSON.stringify({ token: 'another-sweep' });
    const runtime = stack.container.runtime;
    const list = runtime.list_incomplete;
    let calls = 0;
    // While this sweep's first stretch reads its page, another sweep (its lock lapsed) notices a second loss and starts the repair again from the oldest.
    runtime.list_incomplete = async function (this: typeof runtime, ...args: Parameters<typeof list>) {
      if (++calls === 1) await stack.redis.set(repairKey, restarted);
      return list.apply(this, args);
    } as typeof list;
    try {
      const report = await sweeper.sweep();
      expect(report).toMatchObject({ redisLost: true, repairedWaiting: 1 });
    } finally {
      Reflect.deleteProperty(runtime, 'list_incomplete');
    }
    // Kept: this sweep's cursor would have had the repair skip the runs before it, whose timers the second loss took.
    expect(await stack.redis.get(repairKey)).toBe(restarted);
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
